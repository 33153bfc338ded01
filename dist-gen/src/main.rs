//! `smvs-dist-gen OUT_DIR`: writes the man pages and shell completions of the SMVS binaries
//! under OUT_DIR, for `make install`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: smvs-dist-gen OUT_DIR");
        return ExitCode::from(2);
    };
    match smvs_dist_gen::generate(std::path::Path::new(&out)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "smvs-dist-gen: {}: {e}",
                std::path::Path::new(&out).display()
            );
            ExitCode::from(1)
        }
    }
}
