//! Progress bars of long stages.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps labelled `what` (hidden under `-q`).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if ldmscale_util::logging::quiet() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix:>14} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("template"),
    );
    bar.set_prefix(what.to_string());
    bar
}
