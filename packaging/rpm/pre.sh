# ecr-edge %pre: refuse a package built for a CPU this machine cannot run.
@ARCH_CHECK@
