//! The operator side of Rudder and the home of the `rudder` binary's command line. Each verb
//! lives in its own module under [`cli`]; the work itself lives in the library crates.

pub mod cli;
