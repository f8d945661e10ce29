//! `crd-gen`: writes every CRD Rudder serves into `chart/crds/`, one file per API group, from
//! the Rust types in `rudder-config`. `--check` compares instead of writing and fails on any
//! difference (CI's drift check).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use rudder_config::crds;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("crd-gen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let mut check = false;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
    let mut out = workspace.join("chart/crds");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--out" => out = args.next().context("--out needs a directory")?.into(),
            "-h" | "--help" => {
                println!("usage: crd-gen [--check] [--out DIR]   (default DIR: chart/crds)");
                return Ok(true);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let rendered = crds::render_files().map_err(anyhow::Error::msg)?;
    if check {
        let mut current = true;
        for (file, text) in &rendered {
            let path = out.join(file);
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            if &on_disk != text {
                eprintln!("crd-gen: {} is out of date; run `cargo run -p rudder-crd-gen`", path.display());
                current = false;
            }
        }
        if current {
            println!("crd-gen: {} CRD files in {} are current", rendered.len(), out.display());
        }
        return Ok(current);
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for (file, text) in &rendered {
        let path = out.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(true)
}
