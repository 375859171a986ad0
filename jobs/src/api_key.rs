//! api_key (being written)
