//! Panics inside a runtime become that runtime's error. tract asserts on some graphs
//! deep inside tract-core instead of returning an error; a verification must report
//! that (and try the other runtime) rather than abort the whole command.
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use super::RuntimeError;
use crate::error::Result;

/// The text of a panic payload (`panic!("...")` carries a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

thread_local! {
    /// Set while this thread runs inside [`no_panic`].
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) a panic hook that stays quiet for panics [`no_panic`] catches
/// (their message goes into the error) and defers to the previous hook otherwise.
fn quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic into `runtime`'s backend error on `model`, message
/// kept. The session a panic interrupted must not be used again.
pub fn no_panic<T>(runtime: &'static str, model: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    quiet_hook();
    let outer = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    match result {
        Ok(r) => r,
        Err(payload) => Err(RuntimeError::backend(
            runtime,
            model,
            format!("{runtime} panicked: {}", panic_message(&*payload)),
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        let e = no_panic::<()>("tract", "m.onnx", || panic!("index out of bounds: 7"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tract panicked: index out of bounds: 7"), "{e}");
        assert!(e.contains("m.onnx"), "{e}");
        assert_eq!(no_panic("tract", "m", || Ok(3)).unwrap(), 3);
    }
}
