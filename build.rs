//! Embeds the dashboards (`dashboards/`, without tests and node modules)
//! into the binary, so one file serves the wallboard.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || ["tests", "node_modules"].contains(&name.as_str()) {
            continue;
        }
        if path.is_dir() {
            collect(&path, out);
        } else if !name.starts_with("package") && name != "README.md" {
            out.push(path);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("dashboards");
    // Only what is embedded: test runs write screenshots elsewhere in dashboards/.
    for watched in ["index.html", "me.html", "assets"] {
        println!("cargo:rerun-if-changed=dashboards/{watched}");
    }
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut code = String::from(
        "/// Embedded dashboard files: (path under dashboards/, bytes).\npub static ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .expect("under root")
            .to_string_lossy()
            .replace('\\', "/");
        writeln!(code, "    ({rel:?}, include_bytes!({:?})),", f.display().to_string()).expect("write to string");
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("assets.rs");
    std::fs::write(out, code).expect("write assets.rs");
}
