//! `crd-gen`: writes every CRD Rudder serves into `chart/crds/`, one file per API group, from
//! the Rust types in `rudder-config`, and the upstream API coverage report `api/coverage.md`
//! (see [`coverage`]). `--check` compares instead of writing and fails on any difference (CI's
//! drift check).

mod coverage;

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
                println!(
                    "usage: crd-gen [--check] [--out DIR]   (default DIR: chart/crds; also writes api/coverage.md)"
                );
                return Ok(true);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let mut rendered: Vec<(std::path::PathBuf, String)> = crds::render_files()
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .map(|(file, text)| (out.join(file), text))
        .collect();
    let crd_files = rendered.len();
    rendered.push((workspace.join("api/coverage.md"), coverage_report(workspace)?));
    if check {
        let mut current = true;
        for (path, text) in &rendered {
            let on_disk = std::fs::read_to_string(path).unwrap_or_default();
            if &on_disk != text {
                eprintln!("crd-gen: {} is out of date; run `cargo run -p rudder-crd-gen`", path.display());
                current = false;
            }
        }
        if current {
            println!("crd-gen: {crd_files} CRD files in {} and api/coverage.md are current", out.display());
        }
        return Ok(current);
    }
    for (path, text) in &rendered {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(true)
}

/// `api/coverage.md` from the CRDs the types generate and `api/upstream-fields.txt`. Accepted
/// fields upstream lacks without a recorded reason are reported on stderr (and in the file).
fn coverage_report(workspace: &Path) -> anyhow::Result<String> {
    let list = workspace.join("api/upstream-fields.txt");
    let upstream = std::fs::read_to_string(&list)
        .with_context(|| format!("reading {} (scripts/upstream-api-fields.py writes it)", list.display()))?;
    let crds: Vec<serde_json::Value> =
        crds::all().iter().map(serde_json::to_value).collect::<Result<_, _>>().context("CRDs as JSON")?;
    let ours = coverage::accepted_fields(&crds);
    let list_error = |e: String| anyhow::anyhow!("{}: {e}", list.display());
    for field in coverage::unexplained(&upstream, &ours).map_err(list_error)? {
        eprintln!("crd-gen: warning: {field} is accepted but not in the upstream list; explain it in EXPLAINED_EXTRAS");
    }
    coverage::render(&upstream, &ours).map_err(list_error)
}
