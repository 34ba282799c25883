//! How the binaries set up mimalloc, their allocator, and read what
//! memory the process and the machine hold.
//!
//! mimalloc hands memory a program frees back to the OS after a delay
//! (its purge delay, 1 s in the version built here), and the next time
//! that memory is used the kernel has to fault it in and zero it again.
//! The engine's tables grow by doubling: each growth frees the old table
//! just as other tables (other shops' indexes, other agents' marks) grow
//! into fresh memory, so on the VMs this runs on, where zeroing a fresh
//! page has cost up to 2.5 ns a byte, memory the engine could reuse was
//! being paid for twice. Told never to purge, the 1 000-agent desk of
//! `benches/engine.rs` applied about 10 % more events a second in each
//! quarter of a 48 M-event day, and 3–12 % more in the `apply` cases, for
//! 1.8 % more peak memory (BENCHMARKS.md, *mimalloc told to keep what it
//! frees*).
//!
//! mimalloc reads its options from the environment when the process
//! starts, before `main`, and setting one from Rust would take `unsafe`
//! (which the workspace forbids); so the process restarts itself in place
//! with the variable set.
//!
//! Kept memory still has to be faulted in once. A desk's first day (or a
//! big-sale night past every earlier size) grows its tables all day, and
//! each new page then costs the engine thread the kernel's zeroing of it:
//! over a 48 M-event day of the 1 000-agent desk, with every page faulted
//! in before the first event, the engine applied 15–22 % more events a
//! second in two runs (BENCHMARKS.md, *Memory faulted in before the day*).
//! [`reserve`] does that at start, for `server.reserve_memory_mib`.

/// The variable mimalloc reads its purge delay from, in ms.
pub const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";

/// The purge delay the binaries run with unless told otherwise: never.
const NEVER: &str = "-1";

/// Unless [`PURGE_DELAY_VAR`] is set, replaces the process with a fresh
/// run of the same executable and arguments (same pid, open files and
/// environment, via `exec`) with it set to [`NEVER`]; returns only when it
/// was already set (an operator's own value is kept) or the `exec` failed,
/// which it reports on stderr, running on with mimalloc's default.
pub fn keep_freed_memory() {
    if std::env::var_os(PURGE_DELAY_VAR).is_some() {
        return;
    }
    restart();
}

#[cfg(unix)]
fn restart() {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return report(&e),
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    // `exec` returns only on failure.
    let e = command.args(args).env(PURGE_DELAY_VAR, NEVER).exec();
    report(&e);
}

#[cfg(not(unix))]
fn restart() {}

/// The pieces [`reserve`] takes memory in. Small enough that mimalloc
/// carves them from its arenas, whose pages it hands to any size of
/// allocation later, on any thread; a single huge block would go straight
/// back to the OS when freed.
const PIECE: usize = 64 << 10;

/// The stride at which [`reserve`] writes: one byte a base page faults the
/// whole page in (and with transparent huge pages, its 2 MiB page).
const PAGE: usize = 4 << 10;

/// Faults in at least `bytes` of memory, one write a page, and frees it
/// again; with purging off ([`keep_freed_memory`]) mimalloc keeps it, so
/// the tables the engine grows into later take pages the kernel has
/// already zeroed. Returns the bytes touched (`bytes` rounded up to whole
/// [`PIECE`]s). It takes as long as the kernel takes to zero them: from
/// 0.1 to 2.8 ns a byte on the VM measured, 12 s for 4 GiB at the slowest.
/// Under another purge delay the pages go back to the OS after that delay
/// and this only costs time; see [`purges`].
pub fn reserve(bytes: u64) -> u64 {
    let touched = touch(bytes);
    RESERVED.fetch_add(touched, std::sync::atomic::Ordering::Relaxed);
    touched
}

/// Bytes [`reserve`]d by this process so far (`/metrics`).
pub fn reserved() -> u64 {
    RESERVED.load(std::sync::atomic::Ordering::Relaxed)
}

static RESERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// [`reserve`]'s work: touches and frees whole pieces, returns their bytes.
fn touch(bytes: u64) -> u64 {
    let pieces = usize::try_from(bytes.div_ceil(PIECE as u64)).unwrap_or(usize::MAX);
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(pieces);
    for _ in 0..pieces {
        let mut piece = vec![0u8; PIECE];
        for byte in piece.iter_mut().step_by(PAGE) {
            *byte = 1;
        }
        held.push(piece);
    }
    // The writes must happen, though nothing reads them.
    std::hint::black_box(&mut held);
    (held.len() * PIECE) as u64
}

/// How this process's freed memory goes back to the OS, unless it never
/// does ([`NEVER`]): the operator's own delay, or mimalloc's default when
/// the restart of [`keep_freed_memory`] failed. [`reserve`]d memory does
/// not stay under either.
pub fn purges() -> Option<String> {
    match std::env::var(PURGE_DELAY_VAR) {
        Ok(delay) if delay == NEVER => None,
        Ok(delay) => Some(format!("{PURGE_DELAY_VAR}={delay}")),
        Err(_) => Some("mimalloc's default purge delay".to_owned()),
    }
}

#[cfg(unix)]
fn report(e: &std::io::Error) {
    eprintln!(
        "deskpulse: could not restart with {PURGE_DELAY_VAR}={NEVER} ({e}); running with mimalloc's default purge delay"
    );
}

/// A `Key: N kB` figure of a `/proc` file (`/proc/meminfo`,
/// `/proc/self/status`), in KiB; `None` where there is no such file or
/// line (not Linux).
pub fn proc_kib(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(':')))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_touches_whole_pieces_and_counts_them() {
        assert_eq!(touch(0), 0);
        assert_eq!(touch(1), PIECE as u64);
        assert_eq!(touch(PIECE as u64 + 1), 2 * PIECE as u64);
        let before = reserved();
        assert_eq!(reserve(1), PIECE as u64);
        assert_eq!(reserved() - before, PIECE as u64);
    }

    #[test]
    fn proc_kib_reads_a_keyed_figure() {
        let dir = std::env::temp_dir().join(format!("deskpulse-proc-kib-{}", std::process::id()));
        std::fs::write(&dir, "MemTotal:       24683784 kB\nMemAvailable:   23467592 kB\n").unwrap();
        let path = dir.to_str().unwrap();
        assert_eq!(proc_kib(path, "MemAvailable"), Some(23_467_592));
        assert_eq!(proc_kib(path, "MemTotal"), Some(24_683_784));
        assert_eq!(proc_kib(path, "Mem"), None);
        assert_eq!(proc_kib(path, "VmRSS"), None);
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(proc_kib(path, "MemTotal"), None);
    }
}
