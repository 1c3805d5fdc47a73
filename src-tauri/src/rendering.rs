//! How the webview draws on a machine without a GPU.
//!
//! WebKitGTK composites pages with OpenGL and hands frames from its web
//! process to the window as DMA-BUF buffers. On a machine with no GPU render
//! node (`/dev/dri/renderD*`: virtual machines, containers, remote or
//! headless X servers) that OpenGL is Mesa's software rasterizer, so both
//! paths are CPU drawing with extra steps: here they cost about 80 MB in the
//! web process and a few MB in the app process, and frames were no faster.
//! There, the app asks WebKit to draw on the CPU directly. With a GPU it
//! leaves WebKit alone, and a variable the user has set is never overridden.

use std::path::Path;

/// The WebKitGTK variables this module may set, each to `1`.
pub const SOFTWARE_ONLY: [&str; 2] = [
    "WEBKIT_DISABLE_DMABUF_RENDERER",
    "WEBKIT_DISABLE_COMPOSITING_MODE",
];

/// The variables to set: those of [`SOFTWARE_ONLY`] the user has not set,
/// when there is no GPU; none otherwise.
pub fn software_only_variables(has_gpu: bool, is_set: impl Fn(&str) -> bool) -> Vec<&'static str> {
    if has_gpu {
        return Vec::new();
    }
    SOFTWARE_ONLY.into_iter().filter(|v| !is_set(v)).collect()
}

/// Whether `dev_dri` (normally `/dev/dri`) has a GPU render node.
pub fn has_render_node(dev_dri: &Path) -> bool {
    std::fs::read_dir(dev_dri)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
        })
        .unwrap_or(false)
}

/// Applies the choice above to this process, whose WebKit processes inherit
/// it. Must run before any thread starts (environment writes are not
/// thread-safe), so `run` calls it first.
pub fn configure() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let has_gpu = has_render_node(Path::new("/dev/dri"));
    for var in software_only_variables(has_gpu, |v| std::env::var_os(v).is_some()) {
        std::env::set_var(var, "1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_both_paths_are_turned_off() {
        assert_eq!(software_only_variables(false, |_| false), SOFTWARE_ONLY);
    }

    #[test]
    fn with_a_gpu_webkit_is_left_alone() {
        assert!(software_only_variables(true, |_| false).is_empty());
    }

    #[test]
    fn a_variable_the_user_set_is_kept() {
        let set = software_only_variables(false, |v| v == "WEBKIT_DISABLE_COMPOSITING_MODE");
        assert_eq!(set, ["WEBKIT_DISABLE_DMABUF_RENDERER"]);
    }

    #[test]
    fn render_nodes_are_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!has_render_node(dir.path()));
        std::fs::write(dir.path().join("card0"), "").unwrap();
        assert!(
            !has_render_node(dir.path()),
            "a card node alone is not enough"
        );
        std::fs::write(dir.path().join("renderD128"), "").unwrap();
        assert!(has_render_node(dir.path()));
        assert!(!has_render_node(&dir.path().join("missing")));
    }
}
