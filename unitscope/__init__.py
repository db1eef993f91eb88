"""unitscope: what the units of a convolutional network respond to (Zeiler & Fergus 2014, Fig. 2).

Importing the package imports nothing heavy; each stage lives in its own module."""

__version__ = "0.1.0"
