use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = appdata_syncd::cli::Cli::parse();
    match appdata_syncd::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("appdata-syncd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
