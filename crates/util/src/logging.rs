//! The one log subscriber of every ldmscale binary: stage progress at info, warnings (skipped
//! examples, stale results moved aside) always, all on stderr (stdout carries results).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

/// How much to log: `-q` gives [`Verbosity::Quiet`], `-v` / `-vv` more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    /// Warnings and errors only.
    Quiet,
    /// Progress (the default).
    Normal,
    /// Debug lines.
    Verbose,
    /// Everything.
    Trace,
}

impl Verbosity {
    /// From the command line's `-q` and the count of `-v`.
    pub fn from_flags(quiet: bool, verbose: u8) -> Verbosity {
        match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, 1) => Verbosity::Verbose,
            (false, _) => Verbosity::Trace,
        }
    }

    fn level(self) -> tracing::Level {
        match self {
            Verbosity::Quiet => tracing::Level::WARN,
            Verbosity::Normal => tracing::Level::INFO,
            Verbosity::Verbose => tracing::Level::DEBUG,
            Verbosity::Trace => tracing::Level::TRACE,
        }
    }
}

static QUIET: AtomicBool = AtomicBool::new(false);

/// Whether `-q` asked for no progress output (long work hides its progress bars).
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Installs the subscriber for this process (a second call is a no-op).
pub fn init(verbosity: Verbosity) {
    QUIET.store(verbosity == Verbosity::Quiet, Ordering::Relaxed);
    let _ = tracing_subscriber::fmt()
        .with_max_level(verbosity.level())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .try_init();
}
