//! `rudder bench`: discovery benchmarks against a real server.
//!
//! - `bench mesh` writes the synthetic mesh (`rudder_e2e::synthetic`) as a config directory for
//!   `rudder discovery --config-dir`;
//! - `bench xds` connects N Envoy-like ADS streams (`rudder_e2e::loadclient`) to a
//!   running discovery, reports the time each took to get its full config, then optionally
//!   changes a VirtualService file and reports how long every stream took to receive it. It
//!   prints its own CPU time next to the server's (`--pid`), since both share the machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rudder_e2e::loadclient::{LoadOptions, LoadRun, percentile};
use rudder_e2e::process::{Launch, kill_and_wait};
use rudder_e2e::synthetic;
use rudder_xds::server::Kind;

use super::install::exit_code;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Load a running discovery with N simulated sidecars and time their config.
    Xds(XdsArgs),
    /// Write the synthetic benchmark mesh as a config directory.
    Mesh(MeshArgs),
}

#[derive(Debug, clap::Args)]
struct XdsArgs {
    /// Discovery's ADS address (`rudder discovery --grpc-address`).
    #[arg(long, default_value = "127.0.0.1:15010")]
    address: String,
    /// Number of simulated sidecars, one stream and one connection each.
    #[arg(long, default_value_t = 100)]
    proxies: usize,
    /// Use incremental (delta) xDS instead of state-of-the-world.
    #[arg(long)]
    delta: bool,
    /// New streams per second; without it every stream opens at once (a join storm).
    #[arg(long)]
    join_rate: Option<f64>,
    /// Namespace of the simulated sidecars.
    #[arg(long, default_value = synthetic::NAMESPACE)]
    namespace: String,
    /// Give the sidecars this many distinct workload label sets (as a real mesh has; 0: no
    /// labels, all alike).
    #[arg(long, default_value_t = 0)]
    distinct_workloads: usize,
    /// Place the sidecars in this many zones (`node.locality`, as `bench mesh --zones`).
    #[arg(long, default_value_t = 0)]
    zones: usize,
    /// RouteConfiguration names each stream subscribes to (the synthetic mesh's ports).
    #[arg(long, value_delimiter = ',', default_value = "8080,8081,8082,8083")]
    routes: Vec<String>,
    /// After the initial push, flip the route weights in this VirtualService file (90/10
    /// becomes 10/90 and back) and time how long every stream takes to receive every route
    /// configuration in `--routes` again (the change reaches them all).
    #[arg(long)]
    update_file: Option<PathBuf>,
    /// After that, flip the first WorkloadEntry's version label in this file (an endpoint-only
    /// change) and time how long every stream takes to receive new endpoints.
    #[arg(long)]
    endpoint_update_file: Option<PathBuf>,
    /// Make that endpoint-only change this many times, `--settle` apart, and report the median
    /// and range of its server CPU and p99 over them as well as each one (one change is a few
    /// tens of milliseconds of CPU, within a shared machine's noise).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    endpoint_updates: u32,
    /// Last, SIGKILL discovery (`--pid`), start it again with the same command line, and time
    /// how long every stream takes to reconnect (Envoy's backoff) and hold its whole config
    /// again: a reconnect storm. The bench stops the discovery it started when it ends.
    #[arg(long, requires = "pid")]
    restart: bool,
    /// Discovery's process id: report its CPU time and peak resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Give up waiting for a phase after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Quiet time between the initial push and the update, so ACKs settle first (seconds).
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Also report the server's memory after this many idle seconds, after the join and at
    /// the end (discovery returns free memory to the system once it has been idle for a
    /// while; 0: do not wait).
    #[arg(long, default_value_t = 0.0)]
    idle: f64,
}

#[derive(Debug, clap::Args)]
struct MeshArgs {
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    /// HTTP ports per service (8080, 8081, …).
    #[arg(long, default_value_t = 4)]
    ports: usize,
    /// Workloads (WorkloadEntries) per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Spread the workloads over this many zones and give every DestinationRule outlier
    /// detection, so locality failover applies (0: no localities).
    #[arg(long, default_value_t = 0)]
    zones: usize,
    /// Directory to write (created if missing; existing files of the same names are replaced).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: &Args) -> ExitCode {
    match &args.command {
        Command::Mesh(mesh) => exit_code(write_mesh(mesh)),
        Command::Xds(xds) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
            exit_code(runtime.context("starting the runtime").and_then(|rt| rt.block_on(load(xds))))
        }
    }
}

fn write_mesh(args: &MeshArgs) -> anyhow::Result<()> {
    synthetic::write_dir_in_zones(&args.out, args.services, args.ports, args.endpoints, args.zones)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} services × {} ports × {} endpoints to {}",
        args.services,
        args.ports,
        args.endpoints,
        args.out.display()
    );
    Ok(())
}

async fn load(args: &XdsArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    let options = LoadOptions {
        target: format!("http://{}", args.address),
        streams: args.proxies,
        delta: args.delta,
        route_names: args.routes.clone(),
        join_rate: args.join_rate,
        namespace: args.namespace.clone(),
        distinct_workloads: args.distinct_workloads,
        zones: args.zones,
        reconnect: args.restart,
    };
    let mode = if args.delta { "delta" } else { "sotw" };
    println!(
        "{mode}: {} proxies ({} distinct workloads) → {}, join rate {:?}",
        args.proxies, args.distinct_workloads, args.address, args.join_rate
    );

    let client_before = cpu_of("self");
    let server_before = args.pid.map(|pid| cpu_of(&pid.to_string()));
    let server_memory_before = args.pid.and_then(memory_of);
    let started = Instant::now();
    let run = LoadRun::start(options).await.context("starting the streams")?;
    let times = run.wait_full_config(timeout).await;
    let total = started.elapsed();
    let complete = times.iter().flatten().count();
    println!(
        "full config: {complete}/{} streams in {} (p50 {}, p99 {}, max {}); {:.1} MiB received",
        args.proxies,
        ms(Some(total)),
        ms(percentile(&times, 50.0)),
        ms(percentile(&times, 99.0)),
        ms(percentile(&times, 100.0)),
        run.total_bytes() as f64 / (1024.0 * 1024.0),
    );
    let sizes = run.mean_full_config_bytes();
    let by_kind: Vec<String> = Kind::PUSH_ORDER
        .iter()
        .zip(sizes)
        .filter(|(_, b)| *b > 0)
        .map(|(k, b)| format!("{} {}", k.short_name(), kib(b)))
        .collect();
    println!("  initial config per proxy: {} ({})", kib(sizes.iter().sum()), by_kind.join(", "));
    report_errors(&run);
    report_cpu("initial push", client_before, server_before, args.pid);
    report_server_memory("after the join", args.pid, server_memory_before, complete);
    report_idle_memory(args, "after the join", args.pid, server_memory_before, complete).await;

    if let Some(file) = &args.update_file {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        let client_before = cpu_of("self");
        let server_before = args.pid.map(|pid| cpu_of(&pid.to_string()));
        let since = Instant::now();
        flip(file)?;
        // The change reaches every subscribed route configuration; a delta server may send
        // them in several responses, and a stream has converged when it has them all.
        let latencies = run.wait_routes(since, args.routes.len(), timeout).await;
        let received = latencies.iter().flatten().count();
        println!(
            "update ({}): {received}/{} streams got all {} new route configurations (p50 {}, p99 {}, max {}); \
             includes the config-dir watch and debounce",
            file.display(),
            args.proxies,
            args.routes.len(),
            ms(percentile(&latencies, 50.0)),
            ms(percentile(&latencies, 99.0)),
            ms(percentile(&latencies, 100.0)),
        );
        report_cpu("update", client_before, server_before, args.pid);
    }
    if let Some(file) = &args.endpoint_update_file {
        // Server CPU to the last delivery, and to the end of `--settle` after it: the second
        // also holds the acknowledgements still arriving when the last stream got its update
        // (with SotW, each names every subscribed assignment again).
        let (mut delivered_cpu, mut settled_cpu, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        for _ in 0..args.endpoint_updates {
            let client_before = cpu_of("self");
            let server_before = args.pid.map(|pid| cpu_of(&pid.to_string()));
            let since = Instant::now();
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let (flipped, found) = synthetic::flip_first_version(&text);
            anyhow::ensure!(found, "{}: no `version: v1|v2` label to change", file.display());
            std::fs::write(file, flipped).with_context(|| format!("writing {}", file.display()))?;
            let latencies = run.wait_update(Kind::Endpoint, since, timeout).await;
            let received = latencies.iter().flatten().count();
            let p99 = percentile(&latencies, 99.0);
            println!(
                "endpoint update ({}): {received}/{} streams got new endpoints (p50 {}, p99 {}, max {})",
                file.display(),
                args.proxies,
                ms(percentile(&latencies, 50.0)),
                ms(p99),
                ms(percentile(&latencies, 100.0)),
            );
            p99s.extend(p99);
            let delivered = report_cpu("endpoint update", client_before.clone(), server_before.clone(), args.pid);
            tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
            let settled = report_cpu("endpoint update and its ACKs (settled)", client_before, server_before, args.pid);
            if let (Some((delivered, true)), Some((settled, true))) = (delivered, settled) {
                delivered_cpu.push(delivered);
                settled_cpu.push(settled);
            }
        }
        if args.endpoint_updates > 1 {
            println!(
                "endpoint updates ({}): server CPU to delivery {}, to settled {} (exact: {} of them); p99 {}",
                args.endpoint_updates,
                spread(&mut delivered_cpu),
                spread(&mut settled_cpu),
                settled_cpu.len(),
                spread(&mut p99s)
            );
        }
    }
    let mut restarted = None;
    let mut unsynced = 0;
    let mut pid = args.pid;
    if let Some(old) = args.pid.filter(|_| args.restart) {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        let client_before = cpu_of("self");
        let killed = Instant::now();
        let child = restart(old).context("restarting discovery")?;
        pid = Some(child.id());
        restarted = Some(child);
        let latencies = run.wait_resync(killed, timeout).await;
        let resynced = latencies.iter().flatten().count();
        unsynced = args.proxies - resynced;
        println!(
            "restart (SIGKILL, then the same command line): {resynced}/{} streams reconnected and had their whole \
             config again (from the kill: first {}, p50 {}, p99 {}, max {})",
            args.proxies,
            ms(percentile(&latencies, 0.0)),
            ms(percentile(&latencies, 50.0)),
            ms(percentile(&latencies, 99.0)),
            ms(percentile(&latencies, 100.0)),
        );
        // The new process's CPU from its start: loading the mesh and serving the storm.
        report_cpu("restart and resync", client_before, Some(Some(CpuClock::default())), pid);
        report_server_memory("after the resync", pid, None, resynced);
    } else {
        report_server_memory("at the end", pid, server_memory_before, complete);
        report_idle_memory(args, "at the end", pid, server_memory_before, complete).await;
    }
    if let Some(mut child) = restarted {
        // Best effort: the figures are printed; a failed kill leaves nothing to report.
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Some((client_hwm, _)) = memory_of(std::process::id()) {
        println!("client memory: peak RSS {}", mib(client_hwm));
    }
    anyhow::ensure!(complete == args.proxies, "{} streams never got their full config", args.proxies - complete);
    anyhow::ensure!(unsynced == 0, "{unsynced} streams did not resync after the restart");
    Ok(())
}

/// SIGKILLs process `pid` and starts it again as it was started ([`Launch`]).
fn restart(pid: u32) -> anyhow::Result<std::process::Child> {
    let launch = Launch::of(pid)?;
    kill_and_wait(pid)?;
    launch.command()?.spawn().context("starting discovery again")
}

/// Flips the route weights of a VirtualService file in place.
fn flip(file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let (flipped, count) = synthetic::flip_weights(&text);
    anyhow::ensure!(count > 0, "{}: no `weight:` lines to change", file.display());
    std::fs::write(file, flipped).with_context(|| format!("writing {}", file.display()))
}

fn report_errors(run: &LoadRun) {
    let stats = run.stats();
    let failed: Vec<_> = stats.iter().filter_map(|s| Some((&s.node_id, s.error.as_ref()?))).collect();
    if let Some((node, error)) = failed.first() {
        println!("{} streams failed; first: {node}: {error}", failed.len());
    }
}

/// Server peak and current RSS, and the growth over the RSS before the streams opened per
/// stream (the memory a connected, idle proxy costs).
fn report_server_memory(phase: &str, pid: Option<u32>, before: Option<(u64, u64)>, streams: usize) {
    let Some((hwm, rss)) = pid.and_then(memory_of) else { return };
    let per_stream = before
        .filter(|_| streams > 0)
        .map(|(_, base)| {
            format!(
                ", {} per stream over the {} before the join",
                kib(rss.saturating_sub(base) * 1024 / streams as u64),
                mib(base)
            )
        })
        .unwrap_or_default();
    println!("server memory {phase}: peak RSS {}, RSS {}{per_stream}", mib(hwm), mib(rss));
}

/// Reports the CPU both sides spent since the readings before; returns the server's.
fn report_cpu(
    phase: &str,
    client_before: Option<CpuClock>,
    server_before: Option<Option<CpuClock>>,
    pid: Option<u32>,
) -> Option<(Duration, bool)> {
    let client = cpu_of("self").zip(client_before).map(|(after, before)| after.since(&before));
    let server = pid
        .and_then(|pid| cpu_of(&pid.to_string()))
        .zip(server_before.flatten())
        .map(|(after, before)| after.since(&before));
    let shown = |cpu: Option<(Duration, bool)>| match cpu {
        Some((cpu, true)) => ms(Some(cpu)),
        Some((cpu, false)) => format!("{} (in 10 ms ticks)", ms(Some(cpu))),
        None => ms(None),
    };
    let shown_server = if pid.is_some() { format!(", server {}", shown(server)) } else { String::new() };
    println!("  cpu during {phase}: client {}{shown_server}", shown(client));
    server
}

/// "median M (min A, max B)" of `values`, or "–" when there are none.
fn spread(values: &mut [Duration]) -> String {
    values.sort();
    match (values.first(), values.get(values.len() / 2), values.last()) {
        (Some(min), Some(median), Some(max)) => {
            format!("median {} (min {}, max {})", ms(Some(*median)), ms(Some(*min)), ms(Some(*max)))
        }
        _ => "–".to_owned(),
    }
}

/// With `--idle`: the server's memory after that many seconds without load.
async fn report_idle_memory(args: &XdsArgs, phase: &str, pid: Option<u32>, before: Option<(u64, u64)>, streams: usize) {
    if args.idle > 0.0 && pid.is_some() {
        tokio::time::sleep(Duration::from_secs_f64(args.idle)).await;
        report_server_memory(&format!("{phase}, idle {} s", args.idle), pid, before, streams);
    }
}

/// A process's CPU clock: user + system time from `/proc/<pid>/stat` (in 10 ms ticks: Linux's
/// clock tick is 100 Hz on every common configuration, `getconf CLK_TCK`), and each live
/// thread's run time in nanoseconds from `/proc/<pid>/task/<tid>/schedstat`.
#[derive(Clone, Debug, Default)]
struct CpuClock {
    ticks: Duration,
    threads: BTreeMap<u32, u64>,
}

impl CpuClock {
    /// CPU time from `before` to this reading, and whether it is exact. It is when every
    /// thread of `before` still lives (a thread that exited took its run time with it, which
    /// only the tick count keeps); an endpoint change costs tens of milliseconds, a few ticks.
    fn since(&self, before: &CpuClock) -> (Duration, bool) {
        let live = !before.threads.is_empty() && before.threads.keys().all(|tid| self.threads.contains_key(tid));
        if live {
            let ns = self.threads.values().sum::<u64>().saturating_sub(before.threads.values().sum());
            (Duration::from_nanos(ns), true)
        } else {
            (self.ticks.saturating_sub(before.ticks), false)
        }
    }
}

fn cpu_of(pid: &str) -> Option<CpuClock> {
    const TICKS_PER_SECOND: u64 = 100;
    // Listing `/proc/<pid>/task` while threads exit can skip live ones (the kernel resumes
    // the listing by position), which lost a test its own thread in CI. A listing is taken when
    // it has as many threads as the process says it has, read before and after it; a few tries,
    // then the last one.
    let mut reading = None;
    for _ in 0..5 {
        let (count_before, ticks) = process_stat(pid)?;
        let threads = thread_run_times(pid);
        let (count_after, _) = process_stat(pid)?;
        let complete = threads.len() == count_before && count_before == count_after;
        reading = Some(CpuClock { ticks: Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND), threads });
        if complete {
            break;
        }
    }
    reading
}

/// A process's thread count and its user + system time in clock ticks, from `/proc/<pid>/stat`.
fn process_stat(pid: &str) -> Option<(usize, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its closing paren.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let threads: usize = fields.get(17)?.parse().ok()?;
    Some((threads, utime + stime))
}

/// Each listed thread's run time in nanoseconds, from `/proc/<pid>/task/<tid>/schedstat`.
fn thread_run_times(pid: &str) -> BTreeMap<u32, u64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|task| {
                    let tid = task.file_name().to_str()?.parse().ok()?;
                    let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
                    Some((tid, schedstat.split_whitespace().next()?.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `VmHWM` (peak resident) and `VmRSS` of a process, as `/proc/<pid>/status` writes them.
/// Peak and current resident memory of a process in KiB (`VmHWM`, `VmRSS`).
fn memory_of(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name))?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

fn ms(duration: Option<Duration>) -> String {
    match duration {
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        None => "–".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads this test's own thread: the harness runs other tests beside it, whose threads come
    /// and go, so whether the whole process's reading is exact is left to the table test below.
    #[test]
    fn reads_own_cpu_and_memory() {
        let link = std::fs::read_link("/proc/thread-self").unwrap();
        let tid: u32 = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let before = cpu_of("self").unwrap();
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < Duration::from_millis(30) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let after = cpu_of("self").unwrap();
        let (ran_before, ran_after) = (before.threads[&tid], after.threads[&tid]);
        assert!(ran_after > ran_before, "{ran_before} ns, then {ran_after} ns");
        assert!(after.ticks >= before.ticks);
        let (hwm, rss) = memory_of(std::process::id()).unwrap();
        assert!(hwm >= rss && rss > 0, "{hwm} {rss}");
    }

    #[test]
    fn spread_is_median_and_range() {
        let mut values = [30, 10, 20, 50, 40].map(Duration::from_millis);
        assert_eq!(spread(&mut values), "median 30.0 ms (min 10.0 ms, max 50.0 ms)");
        assert_eq!(spread(&mut []), "–");
    }

    /// Exact while every earlier thread lives; in ticks once one has exited (its run time left
    /// with it) or when there is no earlier reading of threads.
    #[test]
    fn cpu_is_exact_only_while_the_threads_live() {
        let clock = |ticks_ms: u64, threads: &[(u32, u64)]| CpuClock {
            ticks: Duration::from_millis(ticks_ms),
            threads: threads.iter().copied().collect(),
        };
        let before = clock(100, &[(1, 5_000_000), (2, 1_000_000)]);
        let cases = [
            ("same threads", clock(110, &[(1, 9_000_000), (2, 1_500_000)]), (4_500_000, true)),
            ("a new thread", clock(110, &[(1, 5_000_000), (2, 1_000_000), (3, 2_000_000)]), (2_000_000, true)),
            ("a thread exited", clock(120, &[(1, 6_000_000)]), (20_000_000, false)),
        ];
        for (case, after, (ns, exact)) in cases {
            assert_eq!(after.since(&before), (Duration::from_nanos(ns), exact), "{case}");
        }
        assert_eq!(clock(30, &[(1, 1)]).since(&CpuClock::default()), (Duration::from_millis(30), false));
    }
}
