//! Reading a daemon's configuration file, with the one error text every daemon gives when it
//! cannot (the operator learns the path it tried and the flag that names another), and the
//! `[state] dir` setting of the daemons that keep a journal.

use std::path::{Path, PathBuf};

/// The configuration file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read config file {} (another file: --config PATH): {source}", path.display())]
pub struct ReadError {
    /// The path tried.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// The text of the configuration file at `path`.
pub fn read(path: &Path) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(|source| ReadError {
        path: path.to_owned(),
        source,
    })
}

/// Why a configuration file was not loaded: not read, or not valid for the daemon.
#[derive(Debug, thiserror::Error)]
pub enum LoadError<E: std::error::Error + 'static> {
    /// Not read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Read, and refused by the daemon's parser.
    #[error("{} is not a valid {daemon} config", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Whose config it should be.
        daemon: &'static str,
        /// What the parser said.
        source: E,
    },
}

/// Reads `path` and validates it with `parse`: the settings and the text (what a SIGHUP
/// compares the file with, daemon-ops' `reload`).
pub fn load<T, E: std::error::Error + 'static>(
    path: &Path,
    daemon: &'static str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<(T, String), LoadError<E>> {
    let text = read(path)?;
    let settings = parse(&text).map_err(|source| LoadError::Invalid {
        path: path.to_owned(),
        daemon,
        source,
    })?;
    Ok((settings, text))
}

/// A `[state] dir` value: `""` keeps no journal (`None`), anything else must be an absolute
/// path. The error is the whole message for the field (`state.dir: ...`).
pub fn state_dir(value: &str) -> Result<Option<PathBuf>, String> {
    match value.trim() {
        "" => Ok(None),
        d if Path::new(d).is_absolute() => Ok(Some(PathBuf::from(d))),
        d => Err(format!(
            "state.dir: {d:?} is not an absolute path (or \"\" for no journal)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_is_absolute_or_empty() {
        assert_eq!(state_dir(" "), Ok(None));
        assert_eq!(
            state_dir("/var/lib/x"),
            Ok(Some(PathBuf::from("/var/lib/x")))
        );
        let e = state_dir("var/lib/x").expect_err("relative");
        assert!(e.starts_with("state.dir: \"var/lib/x\""), "{e}");
    }

    #[test]
    fn a_missing_file_names_the_path_and_the_flag() {
        let e = read(Path::new("/nonexistent/xdpfork/ng-agent.toml")).expect_err("missing");
        let text = e.to_string();
        assert!(
            text.starts_with(
                "cannot read config file /nonexistent/xdpfork/ng-agent.toml (another file: --config PATH): "
            ),
            "{text}"
        );
        assert_eq!(e.source.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn load_returns_the_settings_and_the_text_or_names_the_daemon() {
        let dir = std::env::temp_dir().join(format!("xdpfork-config-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("x.toml");
        std::fs::write(&path, "n = 3\n").expect("write");
        let parse = |t: &str| t.trim().strip_prefix("n = ").expect("n").parse::<u8>();
        let (n, text) = load(&path, "x-agent", parse).expect("valid");
        assert_eq!((n, text.as_str()), (3, "n = 3\n"));
        std::fs::write(&path, "n = 300\n").expect("write");
        let e = load(&path, "x-agent", parse).expect_err("out of range");
        assert_eq!(
            e.to_string(),
            format!("{} is not a valid x-agent config", path.display())
        );
        assert!(
            std::error::Error::source(&e).is_some(),
            "the parser's error is the source"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
