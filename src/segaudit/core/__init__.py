"""The bottom layer: errors, composed configs, plain-data file reading, devices, the console.
Imports nothing else from segaudit."""
