"""The paper's analyses: firing rates, SOPs and energy, frequency spectra, tables."""
