//! The errors of the Omaha protocol module: unreadable documents and answers the agent cannot act on.

use quick_xml::DeError;

/// Why an Omaha document could not be read, or why a response offers nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum OmahaError {
    /// The document is larger than any honest Omaha request or response.
    #[error(
        "Omaha document is {size} bytes, more than the {max} bytes allowed; \
         an Omaha request or response is a few KiB, so this is not one"
    )]
    TooLarge { size: usize, max: usize },

    /// The document carries a DTD; Omaha never uses one and it is how entity attacks start.
    #[error(
        "Omaha document at line {line} declares a DOCTYPE; DTDs and entity declarations \
         are refused, send the document without them"
    )]
    Doctype { line: usize },

    /// The document refers to an entity other than the five XML predefines.
    #[error(
        "Omaha document at line {line} refers to the entity &{name}; only &lt; &gt; &amp; \
         &apos; &quot; and character references are accepted"
    )]
    Entity { line: usize, name: String },

    /// Elements nest deeper than any Omaha document does.
    #[error("Omaha document nests elements more than {max} deep at line {line}; it is not Omaha")]
    TooDeep { line: usize, max: usize },

    /// The bytes are not well-formed XML.
    #[error("Omaha document is not well-formed XML at line {line}, column {column}: {message}")]
    Malformed {
        line: usize,
        column: usize,
        message: String,
    },

    /// The root element is not the one expected (`request` for the server, `response` for the agent).
    #[error("expected an Omaha <{expected}> document but the root element is <{found}>")]
    WrongRoot {
        expected: &'static str,
        found: String,
    },

    /// The `protocol` attribute names a version other than 3.x.
    #[error("Omaha <{root}> speaks protocol {protocol:?}; only protocol 3.x is supported")]
    Protocol {
        root: &'static str,
        protocol: String,
    },

    /// The XML is well-formed but does not have the shape of an Omaha document
    /// (a required attribute is missing, a number is not a number, ...).
    #[error("Omaha <{root}> does not have the expected shape: {source}")]
    Shape {
        root: &'static str,
        #[source]
        source: DeError,
    },

    /// The server answered with a status other than `ok` / `noupdate` for an app or its update check.
    #[error(
        "Omaha server answered status {status:?} on <{element}> for app {appid}; \
         check that the server knows this app id and track"
    )]
    Status {
        appid: String,
        element: &'static str,
        status: String,
    },

    /// An `ok` update check lacks something the agent needs to download the payload.
    #[error(
        "Omaha update offered for app {appid} has no {what}; the server's answer is incomplete"
    )]
    Missing { appid: String, what: &'static str },

    /// A hash attribute cannot be decoded into a SHA-256 digest.
    #[error("Omaha update offered for app {appid} has an unusable {what} {value:?}: {reason}")]
    BadHash {
        appid: String,
        what: &'static str,
        value: String,
        reason: String,
    },

    /// The postinstall action's base64 SHA-256 and the package's hex SHA-256 disagree.
    #[error(
        "Omaha update offered for app {appid} gives two different SHA-256 values: \
         postinstall action {action} and package hash_sha256 {package}; refusing the payload"
    )]
    HashMismatch {
        appid: String,
        action: String,
        package: String,
    },
}
