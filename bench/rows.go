package main

// allRows lists the table's rows, numbered as in the issue (row 5 has three
// parts: 1 client, 16 clients, and the command-line tools).
func allRows(runs int) []row {
	rows := []row{
		reapRow(runs),
		logRow(runs),
		startupRow(runs),
		restartRow(runs),
		controlRow(runs, 1),
		controlRow(runs, 16),
		cliRow(runs),
		memoryRow(max(runs/2, 3)),
		sizeRow(),
		cgroupRow(runs),
	}
	for i, id := range []string{"1", "2", "3", "4", "5a", "5b", "5c", "6", "7", "8"} {
		rows[i].id = id
	}
	return rows
}
