//! Handing the memory a burst of work freed back to the system.
//!
//! glibc's allocator keeps freed memory in its arenas for reuse. After a join storm or a push
//! to every proxy, most of what passed through the streams (response chunks, request buffers,
//! the previous generation) is free but still resident, scattered between live allocations,
//! and only free space at the very top of an arena is returned on its own. Measured at 1,000
//! idle SotW streams on the 1k × 1 mesh: 255 KiB of RSS per stream, of which ~70 KB live heap
//! (massif) and the rest free arena memory; `malloc_trim(0)` brought it to ~104 KiB.
//!
//! So the server watches its own activity (responses sent, pushes, connections) and, once a
//! burst has been followed by [`QUIET`] without any, asks the allocator to return its free
//! pages. That happens once per burst, never while work is under way: trimming walks and locks
//! every arena in turn.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Shared;

/// How long the server must have been idle after a burst before its free memory is returned.
pub const QUIET: Duration = Duration::from_secs(5);

/// A fingerprint of the server's activity: it changes whenever a response is sent (every one
/// takes a nonce), a generation is published, or a stream connects or leaves.
fn activity(shared: &Shared) -> (u64, u64, usize) {
    let connections = shared.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len();
    (shared.next_nonce.load(Ordering::Relaxed), shared.generations.borrow().version, connections)
}

/// Runs until the server is dropped: after each burst of activity followed by `quiet` of
/// none, returns free memory to the system (on a blocking thread).
pub(crate) async fn release_after_bursts(shared: Weak<Shared>, quiet: Duration) {
    let mut bursts = Bursts::default();
    loop {
        tokio::time::sleep(quiet).await;
        let Some(server) = shared.upgrade() else { return };
        let now = activity(&server);
        drop(server);
        if bursts.ended(now) {
            let started = Instant::now();
            let released = tokio::task::spawn_blocking(release_free_memory).await.unwrap_or(false);
            tracing::debug!(
                released,
                took_ms = started.elapsed().as_millis() as u64,
                "returned free memory to the system"
            );
        }
    }
}

/// Tells from activity fingerprints taken a quiet period apart when a burst has ended. The
/// start (loading the mesh, the first generation) is the first burst.
#[derive(Debug)]
struct Bursts<T> {
    last: Option<T>,
    busy: bool,
}

impl<T> Default for Bursts<T> {
    fn default() -> Self {
        Self { last: None, busy: true }
    }
}

impl<T: PartialEq> Bursts<T> {
    /// Whether a burst ended with this look: activity changed before, and not since.
    fn ended(&mut self, now: T) -> bool {
        if self.last.as_ref() == Some(&now) {
            return std::mem::take(&mut self.busy);
        }
        self.busy = true;
        self.last = Some(now);
        false
    }
}

/// Asks glibc to return the free pages of every arena to the system (`malloc_trim(0)`);
/// whether it returned any. Elsewhere (musl, other systems) there is no such call and this
/// does nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim takes no pointer and touches only the allocator's own state, under
    // the allocator's locks (glibc documents it MT-Safe); it frees nothing a caller holds.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_ends_at_the_first_quiet_look_after_it() {
        // Fingerprints seen one quiet period apart, and whether that look ends a burst.
        let looks =
            [(0, false), (0, true), (0, false), (3, false), (7, false), (7, true), (7, false), (8, false), (8, true)];
        let mut bursts = Bursts::default();
        for (i, (now, ends)) in looks.into_iter().enumerate() {
            assert_eq!(bursts.ended(now), ends, "look {i} ({now})");
        }
    }
}
