//! otpd-man DIR: writes otpd(8) and otpctl(8), generated from the clap
//! definitions in `otpd::cli`, so the man pages cannot drift from the CLI.
use clap::CommandFactory;
use std::path::PathBuf;

fn render(cmd: clap::Command, section: &str, dir: &std::path::Path) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).section(section).render(&mut out)?;
    std::fs::write(dir.join(format!("{name}.{section}")), out)?;
    for sub in cmd.get_subcommands() {
        let sub_name = format!("{name}-{}", sub.get_name());
        render(sub.clone().name(Box::leak(sub_name.into_boxed_str()) as &'static str), section, dir)?;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "man".into()));
    std::fs::create_dir_all(&dir)?;
    render(otpd::cli::OtpdArgs::command(), "8", &dir)?;
    render(otpd::cli::Args::command(), "8", &dir)?;
    Ok(())
}
