set terminal pngcairo size 800,500
set output 'docs/scaling_cpu.png'
set title 'Training step on the CPU, 4096 tokens per step (small presets, matched parameters)'
set xlabel 'sequence length T'
set ylabel 'ms per step'
set logscale x 2
set grid
set key left top
plot 'docs/scaling_cpu.png.dat' using 1:2 with linespoints title 'FLASH', 'docs/scaling_cpu.png.dat' using 1:3 with linespoints title 'FLASH-Quad', 'docs/scaling_cpu.png.dat' using 1:4 with linespoints title 'Transformer++', 'docs/scaling_cpu.png.dat' using 1:5 with linespoints title 'Performer', 'docs/scaling_cpu.png.dat' using 1:6 with linespoints title 'Combiner'
