//! Stable hashes: seeds from explicit fields, and fingerprints of what a stage's result depends
//! on. Both are the same on every platform and release (never `Debug` output or std's hasher).

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use ldmscale_util::hash::stable_seed;

/// What a stage's result depends on, hashed: equal fingerprints mean the stored result can be
/// reused. 16 hex digits of SHA-256 over the canonical JSON of the inputs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(pub String);

impl Fingerprint {
    /// The fingerprint of a stage `name` over `inputs` (any serialisable value, upstream
    /// fingerprints included).
    pub fn of<T: Serialize>(name: &str, inputs: &T) -> Fingerprint {
        let json = serde_json::to_string(&(name, inputs)).expect("fingerprint inputs serialise");
        let digest = Sha256::digest(json.as_bytes());
        Fingerprint(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `of(config, width)` for every width of the config, in order.
pub fn per_width(
    config: &crate::config::StudyConfig,
    of: impl Fn(&crate::config::StudyConfig, usize) -> Fingerprint,
) -> Vec<Fingerprint> {
    config.widths.iter().map(|&w| of(config, w)).collect()
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_depend_on_name_and_inputs_only() {
        let a = Fingerprint::of("family", &(16, "ddim"));
        assert_eq!(a, Fingerprint::of("family", &(16, "ddim")));
        assert_ne!(a, Fingerprint::of("family", &(24, "ddim")));
        assert_ne!(a, Fingerprint::of("sweep", &(16, "ddim")));
        assert_eq!(a.as_str().len(), 16);
    }
}
