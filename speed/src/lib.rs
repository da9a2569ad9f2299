//! # tributary-speed: the speed layer
//!
//! Will consume every partition from the live manifest's boundary and keep aggregate states per
//! (partition, offset epoch), exposing consistent snapshots to the serving layer
//! (ARCHITECTURE.md §5).
//!
//! Nothing is implemented here yet: the speed/serving issue builds it on `tributary-schemas`
//! (decoder, view definitions, aggregate states, seam arithmetic).
