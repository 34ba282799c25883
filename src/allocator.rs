//! How the binaries set up mimalloc, their allocator.
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

#[cfg(unix)]
fn report(e: &std::io::Error) {
    eprintln!(
        "deskpulse: could not restart with {PURGE_DELAY_VAR}={NEVER} ({e}); running with mimalloc's default purge delay"
    );
}
