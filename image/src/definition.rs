//! The image definition (`image/image.toml`): what an image is made of, as the user wrote it.
//! Parsing checks every value that a later stage would otherwise trip over, and names the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("reading image definition {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image definition {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("image definition {path}: `{key}` {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub image: ImageSection,
    pub debian: DebianSection,
    pub packages: PackagesSection,
    pub rootfs: RootfsSection,
    pub systemd: SystemdSection,
    pub partitions: Partitions,
    pub kernel: KernelSection,
    /// Container images cut out of the image's packages (`[[container_images]]`).
    #[serde(default)]
    pub container_images: Vec<crate::container::ContainerImageSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    pub name: String,
    pub version: String,
    pub app_id: String,
    pub channel: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSection {
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub architecture: String,
    pub keyring: PathBuf,
    /// The archive's base URI; `None` means "from the host's apt sources".
    pub mirror: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagesSection {
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsSection {
    /// Paths (and everything below them) removed after extraction.
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdSection {
    pub enable: Vec<String>,
    pub default_target: String,
}

/// Partition sizes in MiB.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    pub esp: u64,
    pub usr: u64,
    pub oem: u64,
    pub root: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSection {
    pub cmdline: String,
    pub keep_modules: Vec<String>,
    #[serde(default)]
    pub drop_modules: Vec<String>,
    pub initramfs_modules: Vec<String>,
}

impl Definition {
    pub fn load(path: &Path) -> Result<Definition, DefinitionError> {
        let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks a definition; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Definition, DefinitionError> {
        let def: Definition = toml::from_str(text).map_err(|e| DefinitionError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        def.check(path)?;
        Ok(def)
    }

    fn check(&self, path: &Path) -> Result<(), DefinitionError> {
        let invalid = |key, problem: &str| DefinitionError::Invalid {
            path: path.to_owned(),
            key,
            problem: problem.to_owned(),
        };
        check_version(&self.image.version).map_err(|p| invalid("image.version", p))?;
        if !is_uuid(&self.image.app_id) {
            return Err(invalid(
                "image.app_id",
                "must be a UUID like d57468fa-057a-43ea-97b0-0ed17b82a948",
            ));
        }
        if self.debian.suites.is_empty() {
            return Err(invalid("debian.suites", "must name at least one suite"));
        }
        if self.packages.include.is_empty() {
            return Err(invalid(
                "packages.include",
                "must name at least one package",
            ));
        }
        let p = self.partitions;
        for (key, min) in kiln_contract::disk::MIN_MIB {
            let (name, mib) = match key {
                "esp" => ("partitions.esp", p.esp),
                "usr" => ("partitions.usr", p.usr),
                "oem" => ("partitions.oem", p.oem),
                _ => ("partitions.root", p.root),
            };
            if mib < min {
                return Err(invalid(
                    name,
                    &format!("is {mib} MiB; it must be at least {min} MiB"),
                ));
            }
        }
        Ok(())
    }
}

/// Versions go into file names, boot entries and Omaha requests: keep them to a safe alphabet.
pub fn check_version(version: &str) -> Result<(), &'static str> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~'));
    if ok {
        Ok(())
    } else {
        Err("must start with a digit and use only letters, digits and . - _ ~ (at most 64 characters)")
    }
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_definition_text() -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("image.toml")).unwrap()
    }

    #[test]
    fn the_repository_definition_parses() {
        let def = Definition::parse(&repo_definition_text(), Path::new("image.toml")).unwrap();
        assert_eq!(def.image.name, "kiln");
        assert!(def.packages.include.iter().any(|p| p == "etcd-server"));
        assert!(
            def.debian.mirror.is_none(),
            "the repository must not name a mirror"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let text = repo_definition_text().replace("[partitions]", "[partitions]\nswap = 4");
        let err = Definition::parse(&text, Path::new("image.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("swap"), "{err}");

        let text = repo_definition_text().replace("usr = 2048", "usr = 10");
        let err = Definition::parse(&text, Path::new("image.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("partitions.usr") && err.contains("at least 256"),
            "{err}"
        );

        let text = repo_definition_text().replace("version = \"0.1.0\"", "version = \"../etc\"");
        let err = Definition::parse(&text, Path::new("image.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("image.version"), "{err}");
    }
}
