"""What ClickHouse holds, for people: reports, the HTML report, retention, export."""
