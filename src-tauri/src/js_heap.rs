//! How much JavaScript garbage the web view keeps.
//!
//! JavaScriptCore sizes a web page's heap for browser tabs: by default it
//! lets the heap reach 32 MiB (its `largeHeapSize`) before it collects. The app's page is small: what it
//! keeps alive is a window of rows, but a fast scroll through a large room
//! or a room emptying makes short-lived objects (rows, maps, IPC replies)
//! every frame, and the heap then grows towards that threshold and stays
//! there, since nothing runs afterwards to collect it. A threshold of
//! [`LARGE_HEAP_BYTES`] has the page collect sooner: measured with
//! `scripts/bench-app.sh`, the scroll through 5,000 people grows the web
//! process by about 14 MiB instead of 20-25, with the same frame times
//! (4 MiB measured the same as 8; 8 leaves the page more room between
//! collections).

/// The variable JavaScriptCore reads its heap threshold from (its
/// `largeHeapSize` option); WebKit's processes inherit it from the app.
pub const VARIABLE: &str = "JSC_largeHeapSize";

/// The heap size, in bytes, at which the page's first full collection runs.
pub const LARGE_HEAP_BYTES: u64 = 8 * 1024 * 1024;

/// The value to set, unless the user has set the variable themselves.
pub fn value_to_set(is_set: bool) -> Option<String> {
    (!is_set).then(|| LARGE_HEAP_BYTES.to_string())
}

/// Applies the threshold to this process, whose WebKit processes inherit
/// it. Must run before any thread starts (environment writes are not
/// thread-safe), so `run` calls it first.
pub fn configure() {
    if let Some(value) = value_to_set(std::env::var_os(VARIABLE).is_some()) {
        std::env::set_var(VARIABLE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_set_in_bytes() {
        assert_eq!(value_to_set(false).as_deref(), Some("8388608"));
    }

    #[test]
    fn a_value_the_user_set_is_kept() {
        assert_eq!(value_to_set(true), None);
    }
}
