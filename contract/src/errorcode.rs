//! The error codes of Omaha `<event errorcode="…">`: the numbers the agent sends, and the names
//! the server shows for every code a machine may report.
//!
//! Numbers follow Chromium OS update_engine's `ErrorCode` enum, which Flatcar's update_engine
//! keeps, so a server or dashboard built for those machines reads Kiln's reports the same way;
//! Kiln's own codes start at 1000, past update_engine's. The top bits are flags OR-ed onto a code.

/// update_engine `kActionCodeError`: anything not named below.
pub const GENERIC: i64 = 1;
/// `kActionCodeInstallDeviceOpenError`: the inactive partition cannot be opened or written.
pub const INSTALL_DEVICE: i64 = 7;
/// `kActionCodeDownloadTransferError`.
pub const DOWNLOAD_TRANSFER: i64 = 9;
/// `kActionCodePayloadHashMismatchError`: the payload's SHA-256 is not the response's.
pub const PAYLOAD_HASH_MISMATCH: i64 = 10;
/// `kActionCodePayloadSizeMismatchError`.
pub const PAYLOAD_SIZE_MISMATCH: i64 = 11;
/// `kActionCodeDownloadPayloadVerificationError`: the payload is damaged or not a payload.
pub const PAYLOAD_VERIFICATION: i64 = 12;
/// `kActionCodeDownloadWriteError`: the payload cannot be stored (no room on `/var`).
pub const DOWNLOAD_WRITE: i64 = 14;
/// `kActionCodeNewRootfsVerificationError`: read-back or dm-verity root hash mismatch.
pub const ROOTFS_VERIFICATION: i64 = 15;
/// `kActionCodeDownloadPayloadPubKeyVerificationError`: the manifest signature is bad.
pub const SIGNATURE: i64 = 18;
/// Kiln: the new slot used up its boot tries and the boot loader brought the old slot back.
/// The server records the machine as rolled back.
pub const BOOT_FALLBACK: i64 = 1000;
/// Kiln: the new slot booted but was not healthy in time, so it was not blessed.
pub const UNHEALTHY: i64 = 1001;

/// Kiln: the signed payload is not newer than the running version (a downgrade, refused unless
/// the machine allows it), or the running version is older than the payload's
/// `min_from_version`. Nothing was written.
pub const REFUSED_VERSION: i64 = 1002;
/// Kiln: the signed payload is of another app. Nothing was written.
pub const REFUSED_APP: i64 = 1003;
/// Kiln: the signed payload's version failed to boot on this machine before. Nothing was
/// written.
pub const REFUSED_BAD_VERSION: i64 = 1004;

/// Kiln's own codes and their names.
const KILN: [(i64, &str); 5] = [
    (BOOT_FALLBACK, "KilnBootFallback"),
    (UNHEALTHY, "KilnUnhealthy"),
    (REFUSED_VERSION, "KilnRefusedVersion"),
    (REFUSED_APP, "KilnRefusedApp"),
    (REFUSED_BAD_VERSION, "KilnRefusedBadVersion"),
];

/// Flag bits update_engine may set on a reported code (`kActionCodeDevModeFlag` and friends).
const FLAGS: [(u32, &str); 4] = [
    (1 << 31, "dev-mode"),
    (1 << 30, "resumed"),
    (1 << 29, "test-image"),
    (1 << 28, "test-omaha-url"),
];

/// Codes at and above this are an HTTP status from the Omaha server, plus the status.
const HTTP_RESPONSE_BASE: u32 = 2000;

/// update_engine's names of codes 0..=48, indexed by code.
const UPDATE_ENGINE: [&str; 49] = [
    "Success",
    "Error",
    "OmahaRequestError",
    "OmahaResponseHandlerError",
    "FilesystemCopierError",
    "PostinstallRunnerError",
    "PayloadMismatchedType",
    "InstallDeviceOpenError",
    "KernelDeviceOpenError",
    "DownloadTransferError",
    "PayloadHashMismatchError",
    "PayloadSizeMismatchError",
    "DownloadPayloadVerificationError",
    "DownloadNewPartitionInfoError",
    "DownloadWriteError",
    "NewRootfsVerificationError",
    "NewKernelVerificationError",
    "SignedDeltaPayloadExpectedError",
    "DownloadPayloadPubKeyVerificationError",
    "PostinstallBootedFromFirmwareB",
    "DownloadStateInitializationError",
    "DownloadInvalidMetadataMagicString",
    "DownloadSignatureMissingInManifest",
    "DownloadManifestParseError",
    "DownloadMetadataSignatureError",
    "DownloadMetadataSignatureVerificationError",
    "DownloadMetadataSignatureMismatch",
    "DownloadOperationHashVerificationError",
    "DownloadOperationExecutionError",
    "DownloadOperationHashMismatch",
    "OmahaRequestEmptyResponseError",
    "OmahaRequestXMLParseError",
    "DownloadInvalidMetadataSize",
    "DownloadInvalidMetadataSignature",
    "OmahaResponseInvalid",
    "OmahaUpdateIgnoredPerPolicy",
    "OmahaUpdateDeferredPerPolicy",
    "OmahaErrorInHTTPResponse",
    "DownloadOperationHashMissingError",
    "DownloadMetadataSignatureMissingError",
    "OmahaUpdateDeferredForBackoff",
    "PostinstallPowerwashError",
    "UpdateCanceledByChannelChange",
    "PostinstallFirmwareRONotUpdatable",
    "UnsupportedMajorPayloadVersion",
    "UnsupportedMinorPayloadVersion",
    "OmahaRequestXMLHasEntityDecl",
    "FilesystemVerifierError",
    "UserCanceled",
];

/// The name of a code without flags, if it has one.
pub fn name(code: i64) -> Option<&'static str> {
    let from_update_engine = usize::try_from(code)
        .ok()
        .and_then(|i| UPDATE_ENGINE.get(i));
    let from_kiln = KILN.iter().find(|(n, _)| *n == code).map(|(_, name)| name);
    from_update_engine.or(from_kiln).copied()
}

/// A readable name for an `errorcode` attribute: `PayloadHashMismatchError`,
/// `OmahaHTTPResponse(503)`, `DownloadTransferError+resumed`, or `Unknown(77)`.
/// The attribute is printed by update_engine with `%d`, so flag bits arrive as a negative number.
pub fn describe(code: i64) -> String {
    // Reinterpreting as 32 bits recovers the flags from a negative `%d` rendering.
    let raw = code as i32 as u32;
    let mut base = raw;
    let mut flags = Vec::new();
    for (bit, flag) in FLAGS {
        if raw & bit != 0 {
            base &= !bit;
            flags.push(flag);
        }
    }
    let mut text = match name(i64::from(base)) {
        Some(known) => known.to_owned(),
        None if (HTTP_RESPONSE_BASE..HTTP_RESPONSE_BASE + 1000).contains(&base) => {
            format!("OmahaHTTPResponse({})", base - HTTP_RESPONSE_BASE)
        }
        None => format!("Unknown({base})"),
    };
    for flag in flags {
        text.push('+');
        text.push_str(flag);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_plain_codes() {
        assert_eq!(describe(0), "Success");
        assert_eq!(describe(10), "PayloadHashMismatchError");
        assert_eq!(describe(48), "UserCanceled");
        assert_eq!(describe(49), "Unknown(49)");
    }

    #[test]
    fn names_kiln_agent_codes() {
        assert_eq!(describe(BOOT_FALLBACK), "KilnBootFallback");
        assert_eq!(describe(UNHEALTHY), "KilnUnhealthy");
        assert_eq!(describe(REFUSED_VERSION), "KilnRefusedVersion");
        assert_eq!(describe(REFUSED_APP), "KilnRefusedApp");
        assert_eq!(describe(REFUSED_BAD_VERSION), "KilnRefusedBadVersion");
        assert_eq!(describe(1005), "Unknown(1005)");
    }

    #[test]
    fn every_code_the_agent_sends_has_its_update_engine_name() {
        let sent = [
            (GENERIC, "Error"),
            (INSTALL_DEVICE, "InstallDeviceOpenError"),
            (DOWNLOAD_TRANSFER, "DownloadTransferError"),
            (PAYLOAD_HASH_MISMATCH, "PayloadHashMismatchError"),
            (PAYLOAD_SIZE_MISMATCH, "PayloadSizeMismatchError"),
            (PAYLOAD_VERIFICATION, "DownloadPayloadVerificationError"),
            (DOWNLOAD_WRITE, "DownloadWriteError"),
            (ROOTFS_VERIFICATION, "NewRootfsVerificationError"),
            (SIGNATURE, "DownloadPayloadPubKeyVerificationError"),
        ];
        for (code, expected) in sent {
            assert_eq!(name(code), Some(expected), "{code}");
        }
    }

    #[test]
    fn names_http_statuses_and_flags() {
        assert_eq!(describe(2503), "OmahaHTTPResponse(503)");
        assert_eq!(describe(9 | (1 << 30)), "DownloadTransferError+resumed");
        // 1 << 31 | 12, printed by update_engine with %d.
        assert_eq!(
            describe(i64::from((1u32 << 31 | 12) as i32)),
            "DownloadPayloadVerificationError+dev-mode"
        );
    }
}
