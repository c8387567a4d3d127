//! Advisory lock keys: each order's, and a schema's projection attach lock.

use uuid::Uuid;

/// The advisory lock keys of `orders` (sorted, without repeats, so that two
/// transactions always take shared keys in the same order and cannot
/// deadlock on them): PostgreSQL's two-key form, a class per schema (a
/// rebuild's shadow does not wait for the live tables) and 32 bits of each
/// order id. Two orders sharing 32 bits only wait for each other.
pub(super) fn order_lock_keys(schema: &str, orders: &[Uuid]) -> (i32, Vec<i32>) {
    let mut keys: Vec<i32> = orders.iter().map(|o| fnv32(o.as_bytes())).collect();
    keys.sort_unstable();
    keys.dedup();
    (fnv32(schema.as_bytes()), keys)
}

/// 32-bit FNV-1a: advisory lock keys from names and ids.
pub(crate) fn fnv32(bytes: &[u8]) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as i32
}

/// The attach lock of a schema's projections: every batch that applies
/// events takes it shared; attaching or dropping a projection takes it
/// exclusively (projection_store/). A class of its own, so it never
/// meets an order's key.
pub(crate) fn attach_lock_key(schema: &str) -> (i32, i32) {
    (fnv32(format!("{schema}:projections").as_bytes()), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lock keys are sorted and without repeats (so two batches never wait on each other in a cycle), and each schema has its own class.
    #[test]
    fn lock_keys_are_sorted_per_schema() {
        let orders: Vec<Uuid> = (0..200u128).map(|i| Uuid::from_u128(i * 7919)).collect();
        let mut twice = orders.clone();
        twice.extend(orders.iter().rev());
        let (class, keys) = order_lock_keys("public", &twice);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(keys.len(), 200);
        assert_ne!(class, order_lock_keys("public_rebuild", &orders).0);
        assert_eq!((class, keys), order_lock_keys("public", &orders));
    }
}
