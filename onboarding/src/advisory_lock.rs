//! The transaction-scoped advisory lock keys of the domain's periodic rounds, in one place so
//! that no two rounds share a key (one round holding it would make the other skip its turn).

/// A retention round (`crate::retention`).
pub const RETENTION: i64 = 0x6f6e_626f_6172_6403;
/// A reconciler pass (the saga's reconciler).
pub const RECONCILE: i64 = 0x6f6e_626f_6172_6402;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_has_a_key_of_its_own() {
        let keys = [RETENTION, RECONCILE, jobs::maintenance::MAINTENANCE_LOCK];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b, "two periodic rounds share an advisory lock key");
            }
        }
    }
}
