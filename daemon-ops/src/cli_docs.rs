//! Man pages and shell completions, generated from a binary's own clap definition.
//!
//! Each installed binary has a hidden `generate-docs --out-dir DIR` subcommand that calls
//! [`write`]; `cargo xtask install` runs it on the binaries it installs and copies the result
//! into the system's directories. Generating from the binary itself (rather than from xtask)
//! means the pages always describe exactly the binary installed beside them, and xtask does not
//! have to link the daemons (fork-agent's build needs the BPF toolchain that xtask sets up).
//!
//! Layout under DIR (what xtask expects):
//! ```text
//! man8/NAME.8, man8/NAME-SUB.8     one page for the binary and one per visible subcommand,
//!                                  at every level (NAME-SUB-SUBSUB.8)
//! bash/NAME                        bash-completion
//! zsh/_NAME                        zsh site-functions
//! fish/NAME.fish                   fish vendor_completions.d
//! ```

use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// The man section of every xdpfork binary: system administration commands.
pub const MAN_SECTION: &str = "8";

/// `generate-docs` (hidden: for `cargo xtask install` and packaging, not for operators).
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateDocsArgs {
    /// Directory to write man8/, bash/, zsh/ and fish/ into (created if missing).
    #[arg(long)]
    pub out_dir: PathBuf,
}

/// Why the files could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct GenerateDocsError {
    /// The file or directory being written.
    pub path: PathBuf,
    /// The underlying error.
    pub source: std::io::Error,
}

/// Writes the man pages and completions for `cmd` (the binary's top-level clap command) under
/// `out_dir`; returns the files written, relative to `out_dir`.
pub fn write(cmd: clap::Command, out_dir: &Path) -> Result<Vec<PathBuf>, GenerateDocsError> {
    let mut cmd = cmd;
    cmd.build();
    let name = cmd.get_name().to_owned();
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();

    let version = cmd.get_version().unwrap_or_default().to_owned();
    let page = |c: clap::Command| -> Result<Vec<u8>, std::io::Error> {
        let mut out = Vec::new();
        clap_mangen::Man::new(c)
            .section(MAN_SECTION)
            .source(format!("xdpfork {version}"))
            .manual("xdpfork")
            .render(&mut out)?;
        Ok(out)
    };
    let io_err = |path: &Path| {
        let path = out_dir.join(path);
        move |source| GenerateDocsError { path, source }
    };
    // One page per command at every level, named like git's (`NAME-SUB-SUBSUB.8`), because
    // each page's SUBCOMMANDS section refers to its children by those names.
    let mut pending = vec![(name.clone(), cmd.clone())];
    while let Some((full, c)) = pending.pop() {
        for sub in c.get_subcommands() {
            if !sub.is_hide_set() && sub.get_name() != "help" {
                pending.push((format!("{full}-{}", sub.get_name()), sub.clone()));
            }
        }
        let path = PathBuf::from(format!("man8/{full}.{MAN_SECTION}"));
        let bytes = page(c.name(full)).map_err(io_err(&path))?;
        files.push((path, bytes));
    }

    for (shell, file) in [
        (Shell::Bash, format!("bash/{name}")),
        (Shell::Zsh, format!("zsh/_{name}")),
        (Shell::Fish, format!("fish/{name}.fish")),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut out);
        files.push((PathBuf::from(file), out));
    }

    for (rel, bytes) in &files {
        let path = out_dir.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(rel))?;
        }
        std::fs::write(&path, bytes).map_err(io_err(rel))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small command shaped like the daemons': subcommands, one hidden.
    fn cmd() -> clap::Command {
        clap::Command::new("demo-agent")
            .version("1.2.3")
            .about("demo daemon")
            .subcommand(
                clap::Command::new("run")
                    .about("Run it")
                    .arg(clap::Arg::new("config").long("config")),
            )
            .subcommand(
                clap::Command::new("user")
                    .about("Users")
                    .subcommand(clap::Command::new("add").about("Add one")),
            )
            .subcommand(clap::Command::new("generate-docs").hide(true))
    }

    #[test]
    fn writes_a_page_per_visible_subcommand_and_three_completions() {
        let dir = std::env::temp_dir().join(format!("daemon-ops-docs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = write(cmd(), &dir).expect("writes");
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "man8/demo-agent.8",
                "man8/demo-agent-user.8",
                "man8/demo-agent-user-add.8",
                "man8/demo-agent-run.8",
                "bash/demo-agent",
                "zsh/_demo-agent",
                "fish/demo-agent.fish",
            ]
        );
        let top = std::fs::read_to_string(dir.join("man8/demo-agent.8")).expect("page");
        assert!(top.contains(".TH demo-agent 8"), "{top}");
        assert!(top.contains("xdpfork 1.2.3"), "{top}");
        assert!(
            !top.contains("generate\\-docs"),
            "hidden subcommand listed:\n{top}"
        );
        assert!(top.contains("demo\\-agent\\-user(8)"), "{top}");
        let run = std::fs::read_to_string(dir.join("man8/demo-agent-run.8")).expect("page");
        assert!(run.contains("\\-\\-config"), "{run}");
        let bash = std::fs::read_to_string(dir.join("bash/demo-agent")).expect("bash");
        assert!(bash.contains("complete") && bash.contains("user"), "{bash}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
