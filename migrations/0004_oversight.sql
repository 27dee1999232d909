-- What operators read beyond the live view (issue 13): the history behind the figures is
-- read back at start, by time; a driver's or passenger's trips are found by account.
CREATE INDEX trip_events_at ON trip_events (at);
CREATE INDEX trips_driver ON trips (driver_id);
CREATE INDEX trips_passenger ON trips (passenger_id, requested_at);
