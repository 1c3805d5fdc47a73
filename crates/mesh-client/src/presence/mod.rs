//! User-level presence: one entry per person, not per connection.
