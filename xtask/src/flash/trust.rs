//! The keys `flash` trusts to have signed an image's `SHA256SUMS`: the ones named with
//! `--public-key`, else the keys this user and this checkout build with. Never the
//! `update-key.pub.pem` that lies beside the image: whoever made (or swapped) the build
//! directory made that key too, so a signature by it proves nothing about where the image
//! came from.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_updater::keys::{SigningKey, VerifyingKey, SIGNATURE_LEN};

use crate::build::{dev_key_path, SIGNING_KEY_ENV};
use crate::release::signature;
use crate::{host, keygen};

/// Where a trusted key came from, for the summary and the errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `--public-key`.
    Named,
    /// `cargo xtask keygen`'s public key under the home directory.
    Keygen,
    /// The public half of the private key `KILN_SIGNING_KEY` names.
    SigningKeyEnv,
    /// The checkout's development key, which `build-image` signs with when given no key.
    DevKey,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeySource::Named => "named with --public-key",
            KeySource::Keygen => "your key from `cargo xtask keygen`",
            KeySource::SigningKeyEnv => "the public half of $KILN_SIGNING_KEY",
            KeySource::DevKey => "this checkout's development key",
        })
    }
}

/// A key flash accepts a signature from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    pub key: VerifyingKey,
    /// The file it was read from (a private key's, for the public half of one).
    pub path: PathBuf,
    pub source: KeySource,
}

impl fmt::Display for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {})",
            self.key.fingerprint(),
            self.source,
            self.path.display()
        )
    }
}

/// Where the keys this user builds with are looked for when no `--public-key` is named.
/// [`KeySources::of_this_user`] in use; tests point them at scratch directories.
#[derive(Clone, Debug)]
pub struct KeySources {
    /// The home directory, under which `cargo xtask keygen` writes the public key.
    pub home: Option<PathBuf>,
    /// The private key `KILN_SIGNING_KEY` names.
    pub signing_key: Option<PathBuf>,
    /// The checkout, whose `build/` holds the development key.
    pub checkout: PathBuf,
}

impl KeySources {
    /// `$HOME`, `$KILN_SIGNING_KEY` and this checkout.
    pub fn of_this_user() -> KeySources {
        KeySources {
            home: std::env::var_os("HOME").map(PathBuf::from),
            signing_key: std::env::var_os(SIGNING_KEY_ENV).map(PathBuf::from),
            checkout: host::workspace_root(),
        }
    }

    /// Every file a key may be in, with its source, whether it exists or not.
    fn candidates(&self) -> Vec<(PathBuf, KeySource)> {
        let keygen = self
            .home
            .as_deref()
            .map(|home| keygen::dir_in_home(home).join(keygen::PUBLIC_FILE));
        [
            (keygen, KeySource::Keygen),
            (self.signing_key.clone(), KeySource::SigningKeyEnv),
            (Some(dev_key_path(&self.checkout)), KeySource::DevKey),
        ]
        .into_iter()
        .filter_map(|(path, source)| Some((path?, source)))
        .collect()
    }
}

/// The keys a signature must verify with one of, and the files looked at for them.
#[derive(Debug)]
pub struct TrustedKeys {
    pub keys: Vec<TrustedKey>,
    /// Every file looked at, found or not: what to tell when none was found.
    pub looked_at: Vec<PathBuf>,
}

impl TrustedKeys {
    /// The keys `named` (each must exist), or, when none is named, those of `sources` that
    /// exist.
    pub fn for_flash(named: &[PathBuf], sources: &KeySources) -> Result<TrustedKeys> {
        if named.is_empty() {
            Self::from_sources(sources)
        } else {
            Self::named(named)
        }
    }

    /// Exactly the public key files `paths` (`--public-key`).
    pub fn named(paths: &[PathBuf]) -> Result<TrustedKeys> {
        let keys = paths
            .iter()
            .map(|path| load(path, KeySource::Named))
            .collect::<Result<Vec<_>>>()?;
        Ok(TrustedKeys::new(keys, paths.to_vec()))
    }

    /// The keys of `sources` that exist; a file that exists but holds no key is an error.
    pub fn from_sources(sources: &KeySources) -> Result<TrustedKeys> {
        let candidates = sources.candidates();
        let keys = candidates
            .iter()
            .filter(|(path, _)| path.exists())
            .map(|(path, source)| load(path, *source))
            .collect::<Result<Vec<_>>>()?;
        let looked_at = candidates.into_iter().map(|(path, _)| path).collect();
        Ok(TrustedKeys::new(keys, looked_at))
    }

    /// Drops a key found twice (`KILN_SIGNING_KEY` naming the keygen key, say), keeping the
    /// first.
    fn new(mut keys: Vec<TrustedKey>, looked_at: Vec<PathBuf>) -> TrustedKeys {
        let mut seen = Vec::new();
        keys.retain(|k| {
            let new = !seen.contains(&k.key);
            seen.push(k.key.clone());
            new
        });
        TrustedKeys { keys, looked_at }
    }

    /// The trusted key whose signature over `sums` `sig` is, if any.
    pub fn signer(&self, sums: &[u8], sig: &[u8; SIGNATURE_LEN]) -> Option<&TrustedKey> {
        self.keys
            .iter()
            .find(|k| signature::verifies(sums, sig, &k.key))
    }

    pub fn contains(&self, key: &VerifyingKey) -> bool {
        self.keys.iter().any(|k| &k.key == key)
    }
}

/// Reads a trusted key: a public key for `--public-key` and keygen's file, the public half of
/// a private key for `KILN_SIGNING_KEY` and the development key.
fn load(path: &Path, source: KeySource) -> Result<TrustedKey> {
    let key = match source {
        KeySource::Named | KeySource::Keygen => VerifyingKey::load_pem(path),
        KeySource::SigningKeyEnv | KeySource::DevKey => {
            SigningKey::load_pem(path).map(|k| k.verifying_key())
        }
    };
    let key = key.with_context(|| {
        format!(
            "reading the trusted key {} ({source}): fix or move the file, or name the key to check with --public-key (nothing was written)",
            path.display()
        )
    })?;
    Ok(TrustedKey {
        key,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::testutil::Scratch;

    fn sources(scratch: &Scratch) -> KeySources {
        KeySources {
            home: Some(scratch.path().join("home")),
            signing_key: None,
            checkout: scratch.path().join("checkout"),
        }
    }

    #[test]
    fn default_sources_find_the_keygen_key_and_the_checkout_dev_key() {
        let scratch = Scratch::new("trust-sources");
        let mut sources = sources(&scratch);
        // Nothing there yet: no key, but every place was looked at.
        let none = TrustedKeys::from_sources(&sources).unwrap();
        assert!(none.keys.is_empty());
        assert_eq!(none.looked_at.len(), 2);

        let home = sources.home.clone().unwrap();
        let (_, public) = keygen::keygen(&keygen::dir_in_home(&home)).unwrap();
        let dev_path = dev_key_path(&sources.checkout);
        std::fs::create_dir_all(dev_path.parent().unwrap()).unwrap();
        let dev = SigningKey::generate().unwrap();
        dev.write_pem(&dev_path).unwrap();
        let env_path = scratch.path().join("release-key.pem");
        let env = SigningKey::generate().unwrap();
        env.write_pem(&env_path).unwrap();
        sources.signing_key = Some(env_path.clone());

        let found = TrustedKeys::from_sources(&sources).unwrap();
        let got: Vec<_> = found
            .keys
            .iter()
            .map(|k| (k.path.clone(), k.source, k.key.clone()))
            .collect();
        let keygen_key = VerifyingKey::load_pem(&public).unwrap();
        assert_eq!(
            got,
            [
                (public, KeySource::Keygen, keygen_key),
                (env_path, KeySource::SigningKeyEnv, env.verifying_key()),
                (dev_path, KeySource::DevKey, dev.verifying_key()),
            ]
        );
    }

    #[test]
    fn named_keys_replace_the_defaults_and_must_exist() {
        let scratch = Scratch::new("trust-named");
        let sources = sources(&scratch);
        let dev_path = dev_key_path(&sources.checkout);
        std::fs::create_dir_all(dev_path.parent().unwrap()).unwrap();
        SigningKey::generate()
            .unwrap()
            .write_pem(&dev_path)
            .unwrap();
        let named = scratch.path().join("theirs.pub.pem");
        let key = SigningKey::generate().unwrap().verifying_key();
        key.write_pem(&named).unwrap();

        let trusted = TrustedKeys::for_flash(&[named.clone(), named.clone()], &sources).unwrap();
        assert_eq!(trusted.keys.len(), 1, "{trusted:?}");
        assert_eq!(trusted.keys[0].key, key);
        assert_eq!(trusted.keys[0].source, KeySource::Named);

        let missing = scratch.path().join("missing.pem");
        let err = format!(
            "{:#}",
            TrustedKeys::for_flash(std::slice::from_ref(&missing), &sources).unwrap_err()
        );
        assert!(
            err.contains(&*missing.to_string_lossy()) && err.contains("--public-key"),
            "{err}"
        );
    }
}
