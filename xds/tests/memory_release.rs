//! `release_free_memory` returns freed arena memory to the system. In a test binary of its
//! own: it reads the process's RSS, which other tests running beside it would move.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn freed_memory_goes_back_to_the_system() {
    use rudder_xds::server::memory::release_free_memory;

    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or_default();
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
    }
    // 80 MB of small blocks (arena memory, not mmap), one in 16 kept: the freed runs between
    // the kept blocks are free pages glibc does not return on its own (only an arena's top).
    let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![(i % 251) as u8; 4000]).collect();
    let kept: Vec<Vec<u8>> = blocks.into_iter().step_by(16).collect();
    let before = resident_kib();
    assert!(release_free_memory(), "glibc had free pages to return");
    let after = resident_kib();
    assert!(before.saturating_sub(after) > 30_000, "RSS {before} KiB → {after} KiB");
    let sum: usize = kept.iter().map(|b| usize::from(b[0])).sum();
    assert_eq!(sum, (0..20_000).step_by(16).map(|i| i % 251).sum::<usize>(), "kept blocks intact");
}
