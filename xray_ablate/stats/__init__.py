"""Pure statistics of the sweep's verdicts: simulation of crossed designs, the stopping rule, TOST."""
