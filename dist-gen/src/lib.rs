//! Man pages (clap_mangen) and shell completions (clap_complete) of the SMVS binaries, made
//! from the same clap definitions the binaries parse with, so they cannot drift apart.
//! `make install` runs `smvs-dist-gen OUT_DIR` and copies the result to the standard places:
//!
//! ```text
//!   OUT_DIR/man1/NAME.1, NAME-SUBCOMMAND.1   → $(PREFIX)/share/man/man1/
//!   OUT_DIR/bash/NAME                        → $(PREFIX)/share/bash-completion/completions/
//!   OUT_DIR/zsh/_NAME                        → $(PREFIX)/share/zsh/site-functions/
//!   OUT_DIR/fish/NAME.fish                   → $(PREFIX)/share/fish/vendor_completions.d/
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// Every installed binary's command line, named as the binary is.
pub fn commands() -> Vec<clap::Command> {
    vec![
        smvsd::cli::Cli::command(),
        smvsctl::Cli::command(),
        smvs_keyguard::cli::Cli::command(),
        smvs_hostctl::cli::Cli::command(),
        smvs_directory::cli::Cli::command(),
    ]
}

/// Writes the man pages and completions of [`commands`] under `out` (see the module
/// documentation for the layout) and returns the files written.
pub fn generate(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man = out.join("man1");
    std::fs::create_dir_all(&man)?;
    for cmd in commands() {
        let name = cmd.get_name().to_string();
        let before = list(&man)?;
        // One page for the command and one per subcommand (NAME-SUB.1).
        clap_mangen::generate_to(cmd.clone(), &man)?;
        written.extend(list(&man)?.into_iter().filter(|p| !before.contains(p)));
        for (shell, dir, file) in [
            (Shell::Bash, "bash", name.clone()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let dir = out.join(dir);
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(file);
            let mut w = BufWriter::new(File::create(&path)?);
            clap_complete::generate(shell, &mut cmd.clone(), &name, &mut w);
            w.flush()?;
            written.push(path);
        }
    }
    written.sort();
    Ok(written)
}

fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binary_gets_a_man_page_and_three_completions() {
        let out = tempfile::tempdir().unwrap();
        let written = generate(out.path()).unwrap();
        for name in ["smvsd", "smvsctl", "smvs-keyguard", "smvs-directory"] {
            let page = std::fs::read_to_string(out.path().join(format!("man1/{name}.1"))).unwrap();
            assert!(page.starts_with(".ie"), "{name}.1 is not roff");
            assert!(
                page.contains(&format!(".TH {name} 1")),
                "{name}.1 has no title"
            );
            for file in [
                format!("bash/{name}"),
                format!("zsh/_{name}"),
                format!("fish/{name}.fish"),
            ] {
                let text = std::fs::read_to_string(out.path().join(&file)).unwrap();
                assert!(text.contains(name), "{file} does not name {name}");
                assert!(written.contains(&out.path().join(&file)));
            }
        }
        // Subcommands have pages of their own.
        assert!(out.path().join("man1/smvsctl-send.1").exists());
        assert!(out.path().join("man1/smvs-directory-pubkey.1").exists());
        // The operator's commands are documented too.
        assert!(out.path().join("man1/smvs-keyguard-rotate.1").exists());
        assert!(out.path().join("man1/smvs-keyguard-deregister.1").exists());
    }
}
