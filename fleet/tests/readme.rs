//! The README's fleet example is a unit fleet accepts, and the cloud-config beside it is read
//! without a warning.

use kiln_fleet::job::Requirements;
use kiln_fleet::name::UnitName;
use kiln_fleet::unit::UnitFile;

fn block<'a>(readme: &'a str, fence: &str, containing: &str) -> &'a str {
    readme
        .split(fence)
        .skip(1)
        .map(|b| &b[..b.find("```").expect("a closed block")])
        .find(|b| b.contains(containing))
        .unwrap_or_else(|| panic!("no {fence} block with {containing:?} in the README"))
}

#[test]
fn the_readmes_example_unit_is_accepted() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let text = block(&readme, "```ini\n", "[X-Fleet]");
    let unit = UnitFile::parse(text).expect("the example parses");
    let name = UnitName::parse("example@2.service").unwrap();
    let (req, warnings) = Requirements::from_unit(&name, &unit).expect("its [X-Fleet] is valid");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(req.conflicts, ["example@*.service"]);
}
