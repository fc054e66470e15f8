package main

// allRows lists the table's rows in the order.
func allRows(runs int) []row {
	return []row{
		reapRow(runs),
		logRow(runs),
	}
}
