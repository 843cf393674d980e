//! The pure parts of the rollout policy: which machines are in a percentage, how versions
//! compare, and when a version's failures halt a channel. No state and no clock, so each rule
//! is tested on its own.

use sha2::{Digest, Sha256};

use crate::model::Policy;

/// A machine's fixed place in the fleet, 0..10_000: the first eight bytes of the SHA-256 of its
/// normalized machine id. Raising a channel's percentage only ever adds machines.
pub fn bucket(machine_id: &str) -> u64 {
    let digest = Sha256::digest(machine_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % 10_000
}

/// Whether the machine is inside the first `percent` of the fleet.
pub fn in_percent(machine_id: &str, percent: u8) -> bool {
    bucket(machine_id) < u64::from(percent.min(100)) * 100
}

pub use kiln_contract::version::compare_versions;

/// Why a channel should halt, if the version's failures pass the policy's threshold.
pub fn halt_reason(policy: &Policy, version: &str, errors: u64, completes: u64) -> Option<String> {
    let threshold = policy.halt_error_rate?;
    let finished = errors + completes;
    if finished == 0 || errors < u64::from(policy.halt_min_errors.max(1)) {
        return None;
    }
    let rate = errors as f64 / finished as f64;
    (rate > threshold).then(|| {
        format!(
            "version {version}: {errors} of {finished} finished updates failed ({:.0}%), \
             more than the {:.0}% the policy allows",
            rate * 100.0,
            threshold * 100.0
        )
    })
}

/// Checks that a policy is usable, naming the field that is not.
pub fn validate(policy: &Policy) -> Result<(), String> {
    if policy.percent > 100 {
        return Err(format!("percent is {}, it must be 0..=100", policy.percent));
    }
    if policy.max_updates_per_period > 0 && policy.period_secs == 0 {
        return Err("max_updates_per_period needs a period_secs above 0".into());
    }
    if let Some(rate) = policy.halt_error_rate {
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("halt_error_rate is {rate}, it must be 0..=1"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentage_is_stable_and_roughly_proportional() {
        let machines: Vec<String> = (0..2000).map(|i| format!("machine-{i:04}")).collect();
        let in_25 = machines.iter().filter(|m| in_percent(m, 25)).count();
        assert!((400..600).contains(&in_25), "{in_25} of 2000 in 25%");
        // Growing the percentage keeps everyone already in.
        assert!(machines
            .iter()
            .filter(|m| in_percent(m, 25))
            .all(|m| in_percent(m, 50)));
        assert_eq!(machines.iter().filter(|m| in_percent(m, 0)).count(), 0);
        assert_eq!(machines.iter().filter(|m| in_percent(m, 100)).count(), 2000);
    }

    #[test]
    fn halts_only_past_the_threshold_and_minimum() {
        let policy = Policy {
            halt_error_rate: Some(0.5),
            halt_min_errors: 2,
            ..Policy::default()
        };
        assert_eq!(halt_reason(&policy, "1", 1, 0), None, "below the minimum");
        assert_eq!(halt_reason(&policy, "1", 2, 2), None, "at, not past, 50%");
        assert!(halt_reason(&policy, "1", 3, 2).is_some());
        assert_eq!(
            halt_reason(&Policy::default(), "1", 9, 0),
            None,
            "no threshold set"
        );
    }

    #[test]
    fn refuses_policies_out_of_range() {
        let bad = Policy {
            percent: 101,
            ..Policy::default()
        };
        assert!(validate(&bad).unwrap_err().contains("percent"));
        let bad = Policy {
            halt_error_rate: Some(1.5),
            ..Policy::default()
        };
        assert!(validate(&bad).is_err());
        assert!(validate(&Policy::default()).is_ok());
    }
}
