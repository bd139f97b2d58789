//! Man pages and shell completions generated from the binaries' own clap
//! definitions (`konvertctl generate man|completions`, `konvertd --man`), so
//! that what the package installs says what `--help` says.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// The shells completions are generated for, and where Debian installs each file.
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "usr/share/bash-completion/completions/konvertctl"),
    (Shell::Zsh, "usr/share/zsh/vendor-completions/_konvertctl"),
    (Shell::Fish, "usr/share/fish/vendor_completions.d/konvertctl.fish"),
];

/// Writes `NAME.1` for `cmd` and `NAME-SUB[-SUB].1` for every visible
/// subcommand into `out` (created if missing); returns the files written.
pub fn man_pages(cmd: clap::Command, out: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(out)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, "1", out, &mut written)?;
    written.sort();
    Ok(written)
}

fn write_pages(cmd: &clap::Command, section: &str, out: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, section, out, written)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .manual("Konvert")
        .source(format!("Konvert {}", env!("CARGO_PKG_VERSION")));
    let path = out.join(man.get_filename());
    let mut buf = Vec::new();
    man.render(&mut buf)?;
    fs::write(&path, buf)?;
    written.push(path);
    Ok(())
}

/// Renders one man page of `cmd` (no subcommand pages) in `section` to `w`.
pub fn man_page(cmd: clap::Command, section: &str, w: &mut dyn Write) -> io::Result<()> {
    clap_mangen::Man::new(cmd)
        .section(section)
        .manual("Konvert")
        .source(format!("Konvert {}", env!("CARGO_PKG_VERSION")))
        .render(w)
}

/// Writes completion scripts for bash, zsh and fish into `out` (created if
/// missing) under the names their Debian locations use; returns the files.
pub fn completions(mut cmd: clap::Command, bin_name: &str, out: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(out)?;
    let mut written = Vec::new();
    for (shell, installed) in SHELLS {
        let name = Path::new(installed).file_name().unwrap_or_default();
        let path = out.join(name);
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, bin_name, &mut buf);
        fs::write(&path, buf)?;
        written.push(path);
    }
    Ok(written)
}
