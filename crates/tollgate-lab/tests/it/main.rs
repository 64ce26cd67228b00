//! The lab's integration tests, one binary: the known facts its figures must carry
//! (`facts`), the files it writes (`output`), and the page in a real browser
//! (`browser`).

mod browser;
mod common;
mod facts;
mod output;
