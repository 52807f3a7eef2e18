//! Which degradation settings `ldmscale degrade` uses: the paper's, the small-image variant, or a
//! TOML file of overrides on top of the paper's, with every key checked against the known ones.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ldmscale_data::degrade::RealEsrganParams;
use toml::Value;

/// `--params`: a name or a TOML file.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamsChoice {
    /// `train_realesrgan_x4plus.yml` exactly; images too small for its kernels are refused.
    Paper,
    /// The paper's, with kernels capped to small images (`RealEsrganParams::scaled_for`).
    Scaled,
    /// Overrides of the paper's values, taken literally like `paper`.
    File(PathBuf),
}

impl std::str::FromStr for ParamsChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "paper" => Ok(ParamsChoice::Paper),
            "scaled" => Ok(ParamsChoice::Scaled),
            _ if s.ends_with(".toml") => Ok(ParamsChoice::File(PathBuf::from(s))),
            _ => Err(format!(
                "unknown degradation {s:?}: expected `paper`, `scaled` or a FILE.toml of overrides"
            )),
        }
    }
}

impl ParamsChoice {
    /// The name recorded in the manifest.
    pub fn label(&self) -> String {
        match self {
            ParamsChoice::Paper => "paper".into(),
            ParamsChoice::Scaled => "scaled".into(),
            ParamsChoice::File(path) => path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
        }
    }

    /// Whether kernels are capped to each image (`scaled`) or taken as given.
    pub fn fits_small_images(&self) -> bool {
        *self == ParamsChoice::Scaled
    }

    /// The base settings, `scale` applied when given, all fields validated.
    pub fn resolve(&self, scale: Option<usize>) -> Result<RealEsrganParams> {
        let mut params = match self {
            ParamsChoice::Paper | ParamsChoice::Scaled => RealEsrganParams::x4plus(),
            ParamsChoice::File(path) => read_overrides(path)?,
        };
        if let Some(scale) = scale {
            anyhow::ensure!(
                (1..=16).contains(&scale),
                "--scale {scale}: expected a downscaling factor in 1..=16 (the paper's is 4)"
            );
            params.scale = scale;
        }
        let origin = match self {
            ParamsChoice::File(path) => path.display().to_string(),
            _ => format!("--params {}", self.label()),
        };
        params.validate().with_context(|| origin)?;
        Ok(params)
    }
}

/// The paper's settings with a TOML file's values put in place of theirs.
fn read_overrides(path: &Path) -> Result<RealEsrganParams> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let user: toml::Table = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let mut base = Value::try_from(RealEsrganParams::x4plus()).expect("params serialise");
    let Value::Table(table) = &mut base else {
        unreachable!("a struct serialises to a table")
    };
    merge(table, user, "").with_context(|| format!("{}", path.display()))?;
    base.try_into()
        .with_context(|| format!("{}: does not describe degradation settings", path.display()))
}

/// Replaces `base`'s values by `user`'s, refusing keys `base` lacks and values of another type.
fn merge(base: &mut toml::Table, user: toml::Table, prefix: &str) -> Result<()> {
    for (key, value) in user {
        let path = format!("{prefix}{key}");
        let Some(slot) = base.get_mut(&key) else {
            let known: Vec<&str> = base.keys().map(String::as_str).collect();
            bail!("unknown key `{path}` (known here: {})", known.join(", "));
        };
        match (slot, value) {
            (Value::Table(inner), Value::Table(value)) => merge(inner, value, &format!("{path}."))?,
            (slot, value) => *slot = same_type(slot, value, &path)?,
        }
    }
    Ok(())
}

/// `value` shaped like `like` (an integer is accepted where a float is); a named error otherwise.
fn same_type(like: &Value, value: Value, path: &str) -> Result<Value> {
    match (like, value) {
        (Value::Float(_), Value::Integer(i)) => Ok(Value::Float(i as f64)),
        (Value::Array(like), Value::Array(items)) => {
            if like.len() != items.len() {
                bail!(
                    "`{path}`: expected {} values, found {}",
                    like.len(),
                    items.len()
                );
            }
            let items = like
                .iter()
                .zip(items)
                .map(|(l, v)| same_type(l, v, path))
                .collect::<Result<_>>()?;
            Ok(Value::Array(items))
        }
        (like, value) if like.type_str() == value.type_str() => Ok(value),
        (like, value) => bail!(
            "`{path}`: expected {}, found {} ({value})",
            like.type_str(),
            value.type_str()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(text: &str) -> Result<RealEsrganParams> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        ParamsChoice::File(path).resolve(None)
    }

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let params = overrides("blur2_prob = 0\n[noise1]\nsigma = [2, 20]\n").unwrap();
        let mut want = RealEsrganParams::x4plus();
        want.blur2_prob = 0.0;
        want.noise1.sigma = (2.0, 20.0);
        assert_eq!(params, want);
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_named() {
        let err = format!(
            "{:#}",
            overrides("[noise1]\ngrey_prob = 0.1\n").unwrap_err()
        );
        assert!(err.contains("`noise1.grey_prob`"), "{err}");
        let err = format!("{:#}", overrides("jpeg1 = \"high\"\n").unwrap_err());
        assert!(err.contains("`jpeg1`"), "{err}");
        let err = format!(
            "{:#}",
            overrides("[blur1]\nsizes = [7, 9, 11]\n").unwrap_err()
        );
        assert!(err.contains("`blur1.sizes`"), "{err}");
        let err = format!("{:#}", overrides("jpeg2 = [90, 10]\n").unwrap_err());
        assert!(err.contains("jpeg2"), "{err}");
    }
}
