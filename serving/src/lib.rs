//! # tributary-serving: the serving layer
//!
//! Will answer queries over HTTP by merging the pinned batch view version with the speed layer's
//! states (ARCHITECTURE.md §6), through small traits the binary wires (a view reader, a speed
//! snapshot) rather than batch or speed internals.
//!
//! Nothing is implemented here yet: the speed/serving issue builds it on `tributary-schemas`.
