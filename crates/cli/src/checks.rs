//! Checks of paths and numbers on the command line, made before any work so that a long run
//! never ends in an error about its own arguments. Each error names the flag and the value.

use std::path::Path;

use anyhow::{Result, bail};

/// `path` (given by `flag`) must be an existing file, not a folder.
pub fn input_file(path: &Path, flag: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            bail!("{flag} {}: is a folder; expected a file", path.display())
        }
        Ok(_) => Ok(()),
        Err(e) => bail!("{flag} {}: cannot be read: {e}", path.display()),
    }
}

/// `path` must be writable as a file later: not a folder, and inside an existing folder.
pub fn output_file(path: &Path, flag: &str) -> Result<()> {
    if path.is_dir() {
        bail!(
            "{flag} {}: is a folder; expected a file name",
            path.display()
        );
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent
        && !parent.is_dir()
    {
        bail!(
            "{flag} {}: the folder {} does not exist",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

/// `path` is made a folder later: it may be missing, but an existing one must be a folder.
pub fn output_dir(path: &Path, flag: &str) -> Result<()> {
    if path.exists() && !path.is_dir() {
        bail!(
            "{flag} {}: exists and is not a folder; give a new or existing folder",
            path.display()
        );
    }
    Ok(())
}

/// A finite number above zero.
pub fn positive(value: f64, flag: &str) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        bail!("{flag} {value}: expected a finite number above 0");
    }
    Ok(())
}

/// A count in `1..=max`.
pub fn count(value: usize, max: usize, flag: &str) -> Result<()> {
    if !(1..=max).contains(&value) {
        bail!("{flag} {value}: expected 1 to {max}");
    }
    Ok(())
}

/// `ldmscale plan`: the store is a file and the budget a finite positive number.
pub fn plan_args(args: &crate::plan::PlanArgs) -> Result<()> {
    input_file(&args.store, "--store")?;
    if let Some(g) = args.budget_gflops {
        positive(g, "--budget-gflops")?;
    }
    if let Some(ms) = args.budget_ms {
        positive(ms, "--budget-ms")?;
    }
    Ok(())
}

/// `ldmscale results ...`: stores are files, the output is not also an input.
pub fn results_args(command: &crate::plan::ResultsCommand) -> Result<()> {
    use crate::plan::ResultsCommand;
    match command {
        ResultsCommand::Merge { out, inputs, .. } => {
            output_file(out, "OUT")?;
            for input in inputs {
                input_file(input, "IN")?;
                if same_file(out, input) {
                    bail!(
                        "OUT {} is also an input; merge into a new or another store",
                        out.display()
                    );
                }
            }
            Ok(())
        }
        ResultsCommand::Report { store, out } => {
            input_file(store, "--store")?;
            output_dir(out, "--out")
        }
    }
}

/// Whether both paths name one existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_numbers_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.npy");
        std::fs::write(&file, b"x").unwrap();
        assert!(input_file(&file, "--a").is_ok());
        let err = input_file(dir.path(), "--a").unwrap_err().to_string();
        assert!(
            err.starts_with("--a ") && err.contains("is a folder"),
            "{err}"
        );
        let err = output_file(dir.path(), "--o").unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
        let missing = dir.path().join("no/x.npy");
        let err = output_file(&missing, "--o").unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(output_file(Path::new("x.npy"), "--o").is_ok());
        let err = output_dir(&file, "--out").unwrap_err().to_string();
        assert!(err.contains("not a folder"), "{err}");
        assert!(positive(f64::NAN, "--x").is_err() && positive(-1.0, "--x").is_err());
        assert!(count(0, 4, "--b").is_err() && count(5, 4, "--b").is_err());
        assert!(count(4, 4, "--b").is_ok());
    }
}
