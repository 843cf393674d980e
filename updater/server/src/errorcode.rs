//! update_engine's action exit codes, as machines report them in `<event errorcode="…">`, decoded
//! into names an operator can search for. Numbers follow Chromium OS update_engine's `ErrorCode`
//! enum, which Flatcar's update_engine keeps; the top bits are flags OR-ed onto the code.

use kiln_updater::omaha::kiln_codes;

/// Flag bits update_engine may set on a reported code (`kActionCodeDevModeFlag` and friends).
const FLAGS: [(u32, &str); 4] = [
    (1 << 31, "dev-mode"),
    (1 << 30, "resumed"),
    (1 << 29, "test-image"),
    (1 << 28, "test-omaha-url"),
];

/// Codes at and above this are an HTTP status from the Omaha server, plus the status.
const HTTP_RESPONSE_BASE: u32 = 2000;

/// The names of codes 0..=48, indexed by code.
const NAMES: [&str; 49] = [
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

/// A readable name for an `errorcode` attribute: `PayloadHashMismatchError`,
/// `OmahaHTTPResponse(503)`, `DownloadTransferError+resumed`, or `Unknown(77)`.
/// The attribute is printed by update_engine with `%d`, so flag bits arrive as a negative number.
pub fn describe(code: i64) -> String {
    // Reinterpreting as 32 bits recovers the flags from a negative `%d` rendering.
    let raw = code as i32 as u32;
    let mut base = raw;
    let mut flags = Vec::new();
    for (bit, name) in FLAGS {
        if raw & bit != 0 {
            base &= !bit;
            flags.push(name);
        }
    }
    let mut name = match usize::try_from(base).ok().and_then(|i| NAMES.get(i)) {
        Some(known) => (*known).to_owned(),
        None if i64::from(base) == kiln_codes::BOOT_FALLBACK => "KilnBootFallback".to_owned(),
        None if i64::from(base) == kiln_codes::UNHEALTHY => "KilnUnhealthy".to_owned(),
        None if (HTTP_RESPONSE_BASE..HTTP_RESPONSE_BASE + 1000).contains(&base) => {
            format!("OmahaHTTPResponse({})", base - HTTP_RESPONSE_BASE)
        }
        None => format!("Unknown({base})"),
    };
    for flag in flags {
        name.push('+');
        name.push_str(flag);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn names_plain_codes() {
        assert_eq!(describe(0), "Success");
        assert_eq!(describe(10), "PayloadHashMismatchError");
        assert_eq!(describe(48), "UserCanceled");
        assert_eq!(describe(49), "Unknown(49)");
    }

    #[test]
    fn names_kiln_agent_codes() {
        assert_eq!(describe(1000), "KilnBootFallback");
        assert_eq!(describe(1001), "KilnUnhealthy");
        assert_eq!(describe(1002), "Unknown(1002)");
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
