//! Reading a daemon's configuration file, with the one error text every daemon gives when it
//! cannot (the operator learns the path it tried and the flag that names another).

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
