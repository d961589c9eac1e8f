"""What the notebooks show: set-up, tables, plots, widgets; saved widget state; slimming notebooks to commit."""
