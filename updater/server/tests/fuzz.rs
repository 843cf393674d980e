//! A time-bounded mutation fuzzer over the public endpoint's input path: Omaha request bytes →
//! `Request::parse` → `Engine::handle` → response XML → `Response::parse`. Seeds are the real
//! documents of `shared/omaha-interop/` plus hostile fragments; mutations flip, insert, delete,
//! splice and truncate. It runs 2 s by default; `KILN_FUZZ_SECS=600` for a long run. The
//! generator is a fixed-seed xorshift, so a failure repeats with the same seed and duration.

mod common;

use std::time::{Duration, Instant};

use kiln_updater::omaha::{Request, Response};

const FRAGMENTS: &[&str] = &[
    "<app appid=\"e96281a6-d1af-4bde-9a0a-97b76e56dc57\" machineid=\"m\" version=\"1.0.0\"><updatecheck/></app>",
    "<event eventtype=\"3\" eventresult=\"0\" errorcode=\"-2147483648\"/>",
    "<event eventtype=\"99999999999\" eventresult=\"1\"/>",
    "<!DOCTYPE x [<!ENTITY a \"b\">]>",
    "&a;", "&#0;", "&#x110000;", "&lt;", "<![CDATA[x]]>", "<?pi x?>", "<!-- c -->",
    "appid=\"{}\"", "track=\"\"", "version=\"9999999999999999999999.1\"",
    "\u{FFFF}", "\u{0}", "</app>", "<app>", "<request protocol=\"3.0\">", "</request>",
    "xmlns:x=\"u\" x:a=\"1\"", "<updatecheck targetversionprefix=\"1.\"/>",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(6) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let fragment = FRAGMENTS[rng.below(FRAGMENTS.len())].as_bytes();
                input.splice(at..at, fragment.iter().copied());
            }
            2 if !input.is_empty() => {
                let end = (at + rng.below(32)).min(input.len());
                input.drain(at.min(end)..end);
            }
            3 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                let to = (from + rng.below(200)).min(other.len());
                input.splice(at..at, other[from..to].iter().copied());
            }
            4 => input.truncate(at),
            _ => {
                let bytes = b"<>\"'&=/ \n\x00";
                input.insert(at, bytes[rng.below(bytes.len())]);
            }
        }
    }
}

#[test]
fn request_path_never_panics_on_mutated_documents() {
    let seconds: u64 = std::env::var("KILN_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let seeds: Vec<Vec<u8>> = ["flatcar-request.xml", "update-engine-request.xml"]
        .iter()
        .map(|name| std::fs::read(dir.join(name)).expect("the interop documents"))
        .collect();
    let (engine, clock) = common::engine();
    engine
        .publish(common::package("1.2.4"), Some("alpha"))
        .unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut runs, mut parsed) = (0u64, 0u64);
    while Instant::now() < deadline {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &seeds, &mut input);
        runs += 1;
        let Ok(text) = std::str::from_utf8(&input) else {
            continue;
        };
        let Ok(request) = Request::parse(text) else {
            continue;
        };
        parsed += 1;
        let xml = engine.handle(&request, None).to_xml();
        let response = Response::parse(&xml).unwrap_or_else(|e| {
            panic!("our response does not parse: {e}\nfrom input:\n{text}\nresponse:\n{xml}")
        });
        assert_eq!(
            response.apps.len(),
            request.apps.len(),
            "one answer per app"
        );
        if runs % 1000 == 0 {
            clock.advance(60);
        }
    }
    eprintln!("fuzz: {runs} inputs in {seconds} s, {parsed} parsed as requests, no panic");
    assert!(
        parsed > 0,
        "the mutations never produced a valid request: the fuzzer is broken"
    );
}
