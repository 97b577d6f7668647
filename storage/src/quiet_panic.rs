//! Catching a panic without its report: redb panics on some damaged files (a file cut
//! short), and [`crate::store::open_with`] turns that into a clear error. The standard
//! panic hook would still print "thread ... panicked at ..." (and a backtrace) first,
//! which reads like a crash of fleetmq. [`catch_quietly`] silences the hook for panics
//! of the calling thread while it runs; panics elsewhere are reported as before.

use std::cell::Cell;
use std::panic::{self, UnwindSafe};
use std::sync::Once;

thread_local! {
    /// Whether this thread's panics are caught by [`catch_quietly`] right now.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// Wraps the panic hook installed now (the standard one, or the program's) once, so it
/// says nothing for a thread inside [`catch_quietly`].
fn install() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// `f`'s result, or its panic's payload, without the panic being reported.
pub(crate) fn catch_quietly<R>(f: impl FnOnce() -> R + UnwindSafe) -> std::thread::Result<R> {
    install();
    let was = QUIET.with(|q| q.replace(true));
    let result = panic::catch_unwind(f);
    QUIET.with(|q| q.set(was));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_comes_back_and_quiet_ends_after() {
        let caught = catch_quietly(|| -> u32 { panic!("inside redb") });
        let payload = caught.unwrap_err();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"inside redb"));
        assert!(!QUIET.with(Cell::get));
        assert_eq!(catch_quietly(|| 7).unwrap(), 7);
    }
}
