//! Rebuild when a migration is added or changed: `sqlx::migrate!` embeds `migrations/` at
//! compile time and cannot tell cargo about new files itself.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
