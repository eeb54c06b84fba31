//! Names for external data files when an output is overwritten. A model and its data
//! file cannot be renamed into place together, so the new data never replaces the
//! file the old model reads: it goes to a fresh name of the same family
//! (`m.onnx.data`, `m.onnx.v1.data`, `m.onnx.v2.data`, ...), the model is renamed
//! over the old one in a single step, and only then are the old data files removed.
//! Killed at any moment, the folder holds either the old model with its old data or
//! the new model with its new data, plus at most stale files of the family, which
//! the next save removes.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Versions tried before giving up on a fresh name (and overwriting the first).
const MAX_VERSIONS: usize = 64;

/// The data file names one save uses, and the old files they replace.
#[derive(Debug, Default)]
pub struct DataNames {
    dir: Option<PathBuf>,
    /// requested location → the name written.
    chosen: BTreeMap<String, String>,
    /// Existing files of the chosen names' families, removed after the model is in place.
    displaced: Vec<PathBuf>,
}

impl DataNames {
    /// Fresh names in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        DataNames {
            dir: Some(dir.to_path_buf()),
            ..Default::default()
        }
    }

    /// The name to write `location`'s data under: `location` itself when no file has
    /// it, else the first free version of it. The same answer for the same location.
    pub fn name_for(&mut self, location: &str) -> String {
        if let Some(n) = self.chosen.get(location) {
            return n.clone();
        }
        let Some(dir) = self.dir.clone() else {
            return location.to_string();
        };
        let base = unversioned(location);
        let family: Vec<String> = (0..MAX_VERSIONS).map(|v| versioned(&base, v)).collect();
        let taken = |n: &String| dir.join(n).exists() || self.chosen.values().any(|c| c == n);
        let name = family
            .iter()
            .find(|n| !taken(n))
            .cloned()
            .unwrap_or_else(|| location.to_string());
        for n in &family {
            if *n != name && dir.join(n).is_file() && !self.chosen.values().any(|c| c == n) {
                self.displaced.push(dir.join(n));
            }
        }
        self.chosen.insert(location.to_string(), name.clone());
        name
    }

    /// Removes the replaced data files (once the new model is in place). A file
    /// another name of this save still uses is kept.
    pub fn remove_displaced(self) {
        let keep: Vec<PathBuf> = match &self.dir {
            Some(d) => self.chosen.values().map(|n| d.join(n)).collect(),
            None => return,
        };
        for p in self.displaced {
            if !keep.contains(&p) {
                // Best effort: a file left behind is stale but harmless (unreferenced).
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// `dir/m.onnx.v3.data` → `dir/m.onnx.data`; names without a version unchanged.
fn unversioned(location: &str) -> String {
    let (head, file) = match location.rfind('/') {
        Some(i) => (&location[..=i], &location[i + 1..]),
        None => ("", location),
    };
    let parts: Vec<&str> = file.split('.').collect();
    if parts.len() >= 3 {
        let v = parts[parts.len() - 2];
        if v.len() > 1 && v.starts_with('v') && v[1..].bytes().all(|b| b.is_ascii_digit()) {
            let mut kept = parts[..parts.len() - 2].to_vec();
            kept.push(parts[parts.len() - 1]);
            return format!("{head}{}", kept.join("."));
        }
    }
    location.to_string()
}

/// Version `v` of `base`: itself for 0, else `.v{v}` before the last extension.
fn versioned(base: &str, v: usize) -> String {
    if v == 0 {
        return base.to_string();
    }
    let slash = base.rfind('/').map(|i| i + 1).unwrap_or(0);
    match base[slash..].rfind('.') {
        Some(dot) if dot > 0 => {
            let at = slash + dot;
            format!("{}.v{v}{}", &base[..at], &base[at..])
        }
        _ => format!("{base}.v{v}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_to_their_base() {
        assert_eq!(versioned("m.onnx.data", 2), "m.onnx.v2.data");
        assert_eq!(unversioned("m.onnx.v2.data"), "m.onnx.data");
        assert_eq!(versioned("w/fc2.bin", 1), "w/fc2.v1.bin");
        assert_eq!(unversioned("w/fc2.v1.bin"), "w/fc2.bin");
        assert_eq!(versioned("weights", 3), "weights.v3");
        assert_eq!(unversioned("m.onnx.data"), "m.onnx.data");
        assert_eq!(unversioned("m.vx.data"), "m.vx.data");
    }

    #[test]
    fn an_existing_file_gets_a_fresh_name_and_is_displaced() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("m.onnx.data"), b"old").unwrap();
        std::fs::write(tmp.path().join("m.onnx.v1.data"), b"stale").unwrap();
        let mut names = DataNames::in_dir(tmp.path());
        let n = names.name_for("m.onnx.data");
        assert_eq!(n, "m.onnx.v2.data");
        assert_eq!(names.name_for("m.onnx.data"), n);
        std::fs::write(tmp.path().join(&n), b"new").unwrap();
        names.remove_displaced();
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(left, ["m.onnx.v2.data"]);
    }
}
