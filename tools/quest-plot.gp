# Draws Quest's speedup over dense attention against the context length, one line per budget,
# from the CSV that `aq-bench --quest --csv` writes.  Used by `make bench-quest`:
#   gnuplot -e "csv='build/quest.csv'; png='build/quest-speedup.png'" tools/quest-plot.gp
set datafile separator ","
set terminal pngcairo size 900,540
set output png
set title "Quest vs dense decode attention (f16 KV)"
set xlabel "context (tokens)"
set ylabel "attention speedup over dense (x)"
set logscale x 2
set key top left
set grid
plot for [b in "512 1024 2048 4096"] csv using (strcol(1) eq "f16" && $3 == b+0 ? $2 : 1/0):9 \
     with linespoints title "budget ".b
