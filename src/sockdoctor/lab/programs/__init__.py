"""Small programs that reproduce the classic socket bugs, one bug each.

Each one is run inside a lab namespace with `python -m` and names itself
(the kernel's `comm`, which is what the doctor reports) so that it is easy to
recognise in `sockdoctor ls -p`. They import nothing but the standard library
and `_common`, so they start fast and read like the programs in the seeds.
"""
